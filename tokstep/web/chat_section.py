"""Chat mode's view: `add_chat(model_choice, lm_for)` builds it inside the current `gr.Blocks`.

Send adds the user's message to a `gr.Chatbot` and templates the conversation
(tokstep.core.chat); the assistant's reply is then written with Step, Auto-run or a click on a
top-k candidate, exactly as on the main page. "Show the template's tokens" shows every token
the model reads, the template's control tokens marked.

Per-user state is one `ChatSession` in a `gr.State`. Every event takes the session's model
name (`model_choice`) and asks `lm_for` for the model, so a changed model is noticed at the
next event. Inputs are taken raw (`preprocess=False`) and checked here, like tokstep.web.page.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import gradio as gr

from tokstep.core.chat import NO_TEMPLATE_MESSAGE as NO_TEMPLATE
from tokstep.core.chat import ChatError, ChatSession, ChatTurn, TokenKind, has_chat_template
from tokstep.core.model import LanguageModel
from tokstep.core.sampling import SamplingSettings
from tokstep.core.stepper import RunStopped, Step
from tokstep.core.tokens import visible_whitespace
from tokstep.web.api import number, sampling_settings, whole_number
from tokstep.web.assets import PROMPT_COLOR, RANK_COLORS
from tokstep.web.views import chips_update, generated_chip, inline_code, label_key, step_note, token_id_of_label_key

__all__ = ["add_chat"]

GREEDY, SAMPLE = "Greedy (most likely)", "Sample (seeded)"
DEFAULT_TOP_K, MAX_TOP_K = 5, 20
DEFAULT_REPLY_TOKENS, MAX_REPLY_TOKENS = 64, 256
DEFAULT_SPEED, MIN_SPEED, MAX_SPEED = 3.0, 0.5, 20.0  # tokens per second, as on the main page
STATE_TTL_S = 3600
# Colours of the template's tokens: control tokens stand out, the rest of its text is grey.
SPECIAL_COLOR, TEMPLATE_COLOR = "#fecaca", "#e5e7eb"
# As the main page styles #tokens (tokstep.web.assets.CSS): dark chip text at WCAG AA contrast, labels
# as written, touch-sized buttons. Sent in the section itself, so add_chat needs nothing at launch.
CHAT_CSS = """
#chat-tokens .textfield { line-height: 2.2; }
#chat-tokens .token .text, #chat-tokens .token .label { color: #111 !important; }
#chat-tokens .token .label { text-transform: none !important; }
#chat-legend .chip { color: #111; padding: 0 .4em; border-radius: 4px; white-space: nowrap; }
#chat-send, #chat-step, #chat-autorun, #chat-stop, #chat-undo, #chat-clear { min-height: 44px; }
#chat-stop { background: #b91c1c !important; border-color: #b91c1c !important; color: #fff !important; }
"""
LEGEND = (
    f"<style>{CHAT_CSS}</style>"
    f'<span class="chip" style="background:{SPECIAL_COLOR}">&lt;|im_start|&gt; id · special</span> '
    "a control token of the template · "
    f'<span class="chip" style="background:{TEMPLATE_COLOR}">user id · template</span> '
    "other text the template adds (roles, line breaks) · "
    f'<span class="chip" style="background:{PROMPT_COLOR}">Hello id</span> the messages\' text · '
    f'<span class="chip" style="background:{RANK_COLORS["top 1"]}">Once +id · #1</span> '
    "a token of the reply (+), with its rank, coloured by rank as on the main page"
)
INTRO = (
    "## Chat mode\n"
    "**Send** adds your message to the chat and wraps the conversation in the model's chat template; "
    "then write the assistant's reply with **Step** (one token), **Auto-run** (until the model ends its "
    "turn), or click a candidate to take it. Tick **Show the template's tokens** to see everything the "
    "model reads."
)


@dataclass(frozen=True)
class ChatSettings:
    """What the user set in the chat section."""

    top_k: int = DEFAULT_TOP_K
    sampling: SamplingSettings | None = None
    show_template: bool = False


def read_settings(show_template: Any, top_k_size: Any, mode: Any, temperature: Any, seed: Any) -> ChatSettings:
    """The chat's settings as sent, checked; gr.Error names a bad one."""
    if mode not in (GREEDY, SAMPLE):
        raise gr.Error(f"mode must be {GREEDY!r} or {SAMPLE!r}, got {mode!r}.")
    if not isinstance(show_template, bool):
        raise gr.Error(f"Show the template's tokens must be true or false, got {show_template!r}.")
    return ChatSettings(
        top_k=whole_number(top_k_size, "Top-k size", 1, MAX_TOP_K),
        sampling=sampling_settings(mode == SAMPLE, temperature, 0, 1.0, seed),
        show_template=show_template,
    )


def _chip(turn: ChatTurn, position: int, kind: TokenKind) -> tuple[str, str, str]:
    """(text, category, colour) of one token's chip. Reply tokens read as on the main page
    ("+286 · #1"); the template's read "2048 · special" or "721 · template"."""
    token_id = turn.stepper.ids[position]
    text = visible_whitespace(turn.lm.texts.text(token_id))
    if position >= turn.stepper.prompt_length:
        step = turn.stepper.steps[position - turn.stepper.prompt_length]
        category, color = generated_chip(token_id, step)
        if token_id in turn.end_ids:
            category += " · end of turn"
        return text, category, color
    if kind == "special":
        return text, f"{token_id} · special", SPECIAL_COLOR
    if kind == "template":
        return text, f"{token_id} · template", TEMPLATE_COLOR
    return text, f"{token_id}", PROMPT_COLOR


def token_chips(turn: ChatTurn | None, show_template: bool) -> dict[str, Any]:
    """The reply's tokens; with `show_template`, every token of the conversation before them.
    An update of the chips' value and colour map, as on the main page (`tokstep.web.views.chips_update`)."""
    if turn is None:
        return chips_update([])
    kinds = turn.token_kinds() if show_template else None
    start = 0 if show_template else turn.stepper.prompt_length
    return chips_update(
        _chip(turn, position, kinds[position] if kinds else "reply") for position in range(start, len(turn.stepper.ids))
    )


def chat_note(step: Step, turn: ChatTurn) -> str:
    """The main page's note on a token, in the chat's words for how the turn stopped."""
    note = step_note(replace(step, stop_reason=None))
    if step.token_id in turn.end_ids:
        note += " **The assistant's turn is over:** it wrote its end-of-turn token."
    elif step.stop_reason == "context_full":
        note += " **Stopped:** the model's context is full."
    return note


def render(session: ChatSession, settings: ChatSettings, note: str = "") -> tuple[Any, ...]:
    """Values of the chat's outputs: state, chatbot, top-k label, token chips, status."""
    turn = session.turn
    lines = []
    top: dict[str, float] = {}
    lm = session.lm
    if not has_chat_template(lm.tokenizer):
        lines.append(f"⚠️ {NO_TEMPLATE}")
    elif turn is None:
        lines.append("Type a message and press **Send**.")
    else:
        stepper = turn.stepper
        lines.append(
            f"**{stepper.prompt_length}** tokens of conversation, template included · "
            f"**{len(stepper.generated_ids)}** reply tokens"
            + (f" · context {len(stepper.ids)}/{lm.context_length}" if lm.context_length else "")
            + (" · sampling" if settings.sampling else " · greedy")
        )
        if turn.ended_by_model:
            end = stepper.generated_ids[-1]
            lines.append(
                f"The assistant ended its turn with {inline_code(lm.texts.text(end))} (id {end}). "
                "Send a new message, or Undo to take that token back."
            )
        elif turn.context_full:
            lines.append("The model's context is full: Clear the chat to start again.")
        else:
            candidates, rest = stepper.next_top(settings.top_k)
            top = {label_key(c.token_id, c.token): c.prob for c in candidates}
            best = candidates[0]
            lines.append(
                f"Most likely next token: {inline_code(visible_whitespace(best.token))} (id {best.token_id}) "
                f"with {best.prob:.1%}."
            )
    if note and note.removeprefix("⚠️ ") not in lines[0]:  # the no-template line says it already
        lines.append(note)
    return (session, session.history(), top, token_chips(turn, settings.show_template), "\n\n".join(lines))


def add_chat(model_choice: gr.Component, lm_for: Callable[[Any], LanguageModel], *, autorun_workers: int = 32) -> None:
    """Build the chat section inside the current `gr.Blocks`.

    `model_choice` holds the session's model name (a dropdown or a gr.State); `lm_for(name)`
    gives that model. `autorun_workers`: Auto-runs at once (they mostly pause between tokens).
    """
    with gr.Column(elem_id="chat"):
        gr.Markdown(INTRO, elem_id="chat-intro")
        chatbot = gr.Chatbot(
            label="Chat", elem_id="chat-bot", height=320, feedback_options=None, buttons=["copy", "copy_all"]
        )
        with gr.Row():
            message = gr.Textbox(
                label="Your message", placeholder="Say something to the model", lines=2, scale=4, elem_id="chat-message"
            )
            send = gr.Button("Send", variant="primary", scale=1, elem_id="chat-send")
        with gr.Row():
            step_button = gr.Button("Step", elem_id="chat-step")
            autorun_button = gr.Button("Auto-run", elem_id="chat-autorun")
            stop_button = gr.Button("Stop", variant="stop", elem_id="chat-stop")
            undo_button = gr.Button("Undo", elem_id="chat-undo")
            clear_button = gr.Button("Clear the chat", elem_id="chat-clear")
        topk = gr.Label(
            label="Next token of the reply: the model's top candidates (click one to take it)", elem_id="chat-topk"
        )
        show_template = gr.Checkbox(label="Show the template's tokens", elem_id="chat-show-template")
        tokens = gr.HighlightedText(
            label="Tokens of the reply, each with its id (the template's too when shown)", elem_id="chat-tokens",
            show_legend=False, combine_adjacent=False, show_inline_category=True,
        )  # fmt: skip
        gr.HTML(LEGEND, elem_id="chat-legend")
        status = gr.Markdown(elem_id="chat-status")
        with gr.Accordion(
            "Chat settings: greedy or sampling, top-k size, Auto-run", open=False, elem_id="chat-settings"
        ):
            with gr.Row():
                mode = gr.Radio(
                    [GREEDY, SAMPLE], value=GREEDY, label="How Step and Auto-run choose", elem_id="chat-mode"
                )
                temperature = gr.Slider(0.1, 2.0, value=1.0, step=0.05, label="Temperature", elem_id="chat-temperature")
                seed = gr.Number(value=0, precision=0, minimum=0, label="Seed", elem_id="chat-seed")
            with gr.Row():
                top_k_size = gr.Slider(
                    1,
                    MAX_TOP_K,
                    value=DEFAULT_TOP_K,
                    step=1,
                    label="Top-k size (candidates shown)",
                    elem_id="chat-topk-size",
                )
                n_tokens = gr.Slider(
                    1, MAX_REPLY_TOKENS, value=DEFAULT_REPLY_TOKENS, step=1, label="Most tokens per Auto-run",
                    elem_id="chat-autorun-tokens",
                )  # fmt: skip
                speed = gr.Slider(
                    MIN_SPEED,
                    MAX_SPEED,
                    value=DEFAULT_SPEED,
                    step=0.5,
                    label="Speed (tokens per second)",
                    elem_id="chat-speed",
                )
    state = gr.State(None, time_to_live=STATE_TTL_S)
    view = [state, chatbot, topk, tokens, status]
    settings = [show_template, top_k_size, mode, temperature, seed]
    raw = {"preprocess": False, "show_progress": "hidden"}
    api = {**raw, "api_visibility": "undocumented"}  # callable by name, as tokstep.web.page's events
    private = {**raw, "api_visibility": "private"}

    def session_for(session: ChatSession | None, name: Any) -> ChatSession:
        """The user's session on the model `name` names now (a new one the first time)."""
        try:
            lm = lm_for(name)
        except Exception as error:  # whatever lm_for raises, the user gets its message
            raise gr.Error(f"Cannot use the model {name!r}: {error}", title="Chat") from None
        if not isinstance(session, ChatSession):
            return ChatSession(lm)
        if session.use_model(lm):
            gr.Info("The model changed: the conversation's text stays, and the next message templates it anew.")
        return session

    def refused(session: ChatSession, chosen: ChatSettings, error: ChatError) -> tuple[Any, ...]:
        gr.Warning(str(error))
        return render(session, chosen, f"⚠️ {error}")

    def on_view(session: Any, name: Any, *values: Any) -> tuple[Any, ...]:
        return render(session_for(session, name), read_settings(*values))

    def stop_runs(session: ChatSession) -> None:
        """Events that cancel Auto-run wait for its step in progress: none lands after them."""
        if session.turn is not None:
            session.turn.stepper.stop_runs()

    def on_send(session: Any, name: Any, text: Any, *values: Any) -> tuple[Any, ...]:
        chosen = read_settings(*values)
        session = session_for(session, name)
        stop_runs(session)
        try:
            turn = session.send(text)
        except ChatError as error:
            # gr.Error changes no output: the chat and the message box stay as they were.
            raise gr.Error(str(error), title="Cannot send") from None
        note = f"Sent. The model reads {turn.stepper.prompt_length} tokens: press Step or Auto-run to write the reply."
        return (*render(session, chosen, note), "")

    def append(session: ChatSession, chosen: ChatSettings, token_id: int | None = None) -> tuple[Any, ...]:
        if session.turn is None:
            return refused(session, chosen, ChatError(_nothing_to_step(session)))
        try:
            step = session.turn.step(chosen.top_k, token_id=token_id, sampling=chosen.sampling)
        except ChatError as error:
            return refused(session, chosen, error)
        return render(session, chosen, chat_note(step, session.turn))

    def on_step(session: Any, name: Any, *values: Any) -> tuple[Any, ...]:
        chosen = read_settings(*values)
        return append(session_for(session, name), chosen)

    def on_pick(
        session: Any, name: Any, show: Any, k: Any, how: Any, temp: Any, draw_seed: Any, event: gr.SelectData
    ) -> tuple[Any, ...]:
        # Named parameters: Gradio passes the event data by the annotation of a named one.
        chosen = read_settings(show, k, how, temp, draw_seed)
        session = session_for(session, name)
        stop_runs(session)
        token_id = token_id_of_label_key(str(event.value))
        if token_id is None:
            return render(session, chosen)
        return append(session, chosen, token_id)

    def on_autorun(session: Any, name: Any, n: Any, pace: Any, *values: Any) -> Iterator[tuple[Any, ...]]:
        n = whole_number(n, "Most tokens per Auto-run", 1, MAX_REPLY_TOKENS)
        pause_s = 1.0 / number(pace, "Speed", MIN_SPEED, MAX_SPEED)
        chosen = read_settings(*values)
        session = session_for(session, name)
        turn = session.turn
        if turn is None or turn.over:
            yield append(session, chosen)  # says why nothing can be written
            return
        run = turn.stepper.start_run()
        try:
            for count in range(1, n + 1):
                started = time.monotonic()
                try:
                    step = turn.step(chosen.top_k, sampling=chosen.sampling, run=run)
                except RunStopped:  # Stop, Undo, a pick, Send or Clear came: the view shows the turn as it is
                    return
                note = chat_note(step, turn)
                if not turn.over and count == n:
                    note += f" **Stopped:** Auto-run wrote the {n} tokens asked for; Auto-run again to go on."
                yield render(session, chosen, note)
                if turn.over:
                    return
                if count < n:
                    time.sleep(max(0.0, pause_s - (time.monotonic() - started)))
        finally:
            turn.stepper.end_run()  # ended or stopped: the class's next passes do not wait for it

    def on_undo(session: Any, name: Any, *values: Any) -> tuple[Any, ...]:
        chosen = read_settings(*values)
        session = session_for(session, name)
        stop_runs(session)
        if session.turn is None:
            return refused(session, chosen, ChatError("Nothing to undo: no reply is being written."))
        try:
            step = session.turn.undo()
        except ChatError as error:
            return refused(session, chosen, error)
        return render(session, chosen, f"Took back {inline_code(visible_whitespace(step.token))} (id {step.token_id}).")

    def on_clear(session: Any, name: Any, *values: Any) -> tuple[Any, ...]:
        session = session_for(session, name)
        stop_runs(session)
        session.clear()
        return render(session, read_settings(*values), "The chat is cleared.")

    autorun_event = autorun_button.click(
        on_autorun, inputs=[state, model_choice, n_tokens, speed, *settings], outputs=view,
        api_name="chat_autorun", concurrency_limit=autorun_workers, **api,
    )  # fmt: skip
    step_event = step_button.click(
        on_step, inputs=[state, model_choice, *settings], outputs=view, api_name="chat_step", **api
    )
    runs = [autorun_event, step_event]
    send.click(
        on_send, inputs=[state, model_choice, message, *settings], outputs=[*view, message],
        api_name="chat_send", cancels=runs, **api,
    )  # fmt: skip
    message.submit(
        on_send, inputs=[state, model_choice, message, *settings], outputs=[*view, message], cancels=runs, **private
    )
    undo_button.click(
        on_undo, inputs=[state, model_choice, *settings], outputs=view, api_name="chat_undo", cancels=runs, **api
    )
    clear_button.click(
        on_clear, inputs=[state, model_choice, *settings], outputs=view, api_name="chat_clear", cancels=runs, **api
    )
    # The Chatbot's own trash button empties it in the browser: the session starts over too.
    chatbot.clear(on_clear, inputs=[state, model_choice, *settings], outputs=view, cancels=runs, **private)
    topk.select(on_pick, inputs=[state, model_choice, *settings], outputs=view, cancels=[autorun_event], **private)

    def on_stop(session: Any, name: Any, *values: Any) -> tuple[Any, ...]:
        # As the page's Stop: the cancelled run's step in progress may still append a token.
        session = session_for(session, name)
        stop_runs(session)
        return render(session, read_settings(*values), "**Stopped.**")

    stop_button.click(
        on_stop, inputs=[state, model_choice, *settings], outputs=view, cancels=[autorun_event],
        concurrency_limit=None, **private,
    )  # fmt: skip
    # A changed setting or model redraws the view; so does the page's first load.
    triggers = [control.change for control in settings]
    if hasattr(model_choice, "change"):
        triggers.append(model_choice.change)
    gr.on(
        triggers, on_view, inputs=[state, model_choice, *settings], outputs=view,
        api_name="chat_view", trigger_mode="always_last", **api,
    )  # fmt: skip
    root = gr.context.Context.root_block
    if root is not None:
        root.load(on_view, inputs=[state, model_choice, *settings], outputs=view, **private)


def _nothing_to_step(session: ChatSession) -> str:
    if not has_chat_template(session.lm.tokenizer):
        return NO_TEMPLATE
    return "No reply is being written: type a message and press Send first."
