"""Turning a chat session into what the chat section's components show. No callbacks here.

`render(session, settings, note)` returns a `ChatView`: the session (the per-user state), the
conversation for the gr.Chatbot, the reply's next-token candidates, the token chips and the status.
Reply tokens read as on the main page (tokstep.web.views); the template's own tokens, shown on
request, are marked "special" or "template".
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, NamedTuple

from tokstep.core.chat import NO_TEMPLATE_MESSAGE, ChatSession, ChatTurn, Message, TokenKind, has_chat_template
from tokstep.core.stepper import RunStopped, Step
from tokstep.core.tokens import visible_whitespace
from tokstep.runtimes.engine import EngineError
from tokstep.web.assets import PROMPT_COLOR
from tokstep.web.settings import ChatSettings
from tokstep.web.views import chips_update, generated_chip, inline_code, label_key, step_note

# Colours of the template's tokens: control tokens stand out, the rest of its text is grey.
SPECIAL_COLOR, TEMPLATE_COLOR = "#fecaca", "#e5e7eb"


class ChatView(NamedTuple):
    """What the chat section shows for one session: a value for each of its view outputs."""

    state: ChatSession
    chatbot: list[Message]
    topk: dict[str, float]
    tokens: dict[str, Any]
    status: str


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


def render(session: ChatSession, settings: ChatSettings, note: str = "") -> ChatView:
    """What the chat section shows for `session`, with `note` under the status."""
    turn = session.turn
    lines = []
    top: dict[str, float] = {}
    lm = session.lm
    if not has_chat_template(lm.tokenizer):
        lines.append(f"⚠️ {NO_TEMPLATE_MESSAGE}")
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
            try:
                candidates, _ = stepper.next_top(settings.top_k)
            except EngineError as error:  # the chat so far is all here, and the next Step asks again
                candidates = []
                lines.append(f"⚠️ **{error.title}:** {error}")
            except RunStopped:  # a Stop cancelled the engine's request for it; the next view asks again
                candidates = []
            top = {label_key(c.token_id, c.token): c.prob for c in candidates}
            if candidates:
                best = candidates[0]
                lines.append(
                    f"Most likely next token: {inline_code(visible_whitespace(best.token))} (id {best.token_id}) "
                    f"with {best.prob:.1%}."
                )
    if note and note.removeprefix("⚠️ ") not in lines[0]:  # the no-template line says it already
        lines.append(note)
    return ChatView(session, session.history(), top, token_chips(turn, settings.show_template), "\n\n".join(lines))
