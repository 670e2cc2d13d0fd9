"""The Gradio page: `create_demo(lm)` builds it; callbacks only render what the engine gives.

Per-user state is one `TokenStepper` in a `gr.State` (token ids, KV cache, next-token
logits). The model itself is shared read-only; its forward passes take turns on a lock
(see `LanguageModel.forward_lock`), while Auto-run's pauses between tokens overlap freely.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import gradio as gr

from tokstep.engine import (
    STOP_REASON_TEXT,
    PromptError,
    Step,
    TokenStepper,
    context_full_message,
)
from tokstep.loading import LanguageModel
from tokstep.tokens import visible_whitespace

DEFAULT_PROMPT = "Once upon a time"
NOTEBOOK_PROMPT = "Once upon a time, generative models"
TOP_K = 5
DEFAULT_AUTORUN_TOKENS = 20
MAX_AUTORUN_TOKENS = 256
DEFAULT_SPEED = 3.0  # tokens per second: slow enough to read each token as it comes
MIN_SPEED, MAX_SPEED = 0.5, 20.0
MAX_PROMPT_CHARS = 100_000  # GPT-2's 1024 tokens are about 4,000 characters of English
MAX_API_TOKENS = 1024  # /generate's limit for a model with no fixed context length
PROMPT_COLOR = "#bfdbfe"  # light blue
GENERATED_COLOR = "#fed7aa"  # light orange
# A tab closed or idle this long gives its KV cache back (seconds since the last update).
STATE_TTL_S = 3600

# Page styling: solid, dark-on-light token chips in both themes (WCAG AA contrast), visible
# keyboard focus, and touch-sized buttons (44 px, as WCAG 2.5.5 asks) on phones.
CSS = """
#tokens .textfield { line-height: 2.2; }
#tokens .token .text, #tokens .token .label { color: #111 !important; }
#status p { margin: 0.25em 0; }
#step, #autorun, #stop, #reset, .gallery-item, .example { min-height: 44px; }
/* Gradio's orange and red buttons carry white text at about 3:1; these darker shades pass 4.5:1. */
#step { background: #c2410c !important; border-color: #c2410c !important; color: #fff !important; }
#step:hover { background: #9a3412 !important; }
#stop { background: #b91c1c !important; border-color: #b91c1c !important; color: #fff !important; }
#stop:hover { background: #991b1b !important; }
button:focus-visible, textarea:focus-visible, input:focus-visible, [tabindex]:focus-visible {
  outline: 3px solid #2563eb !important; outline-offset: 2px;
}
"""

# Runs once when the page loads: Ctrl+Enter (Cmd+Enter on a Mac) presses Step from anywhere,
# screen readers are told about the shortcut, and the status line is announced as it changes.
JS = """
() => {
  document.addEventListener("keydown", (event) => {
    if ((event.ctrlKey || event.metaKey) && event.key === "Enter") {
      const step = document.querySelector("#step");
      if (step && !step.disabled) { event.preventDefault(); step.click(); }
    }
  });
  const mark = () => {
    const step = document.querySelector("#step");
    const status = document.querySelector("#status");
    if (!step || !status) { return false; }
    step.setAttribute("aria-keyshortcuts", "Control+Enter");
    status.setAttribute("aria-live", "polite");
    return true;
  };
  if (!mark()) { const timer = setInterval(() => { if (mark()) { clearInterval(timer); } }, 200); }
}
"""

# What every launch of the page passes to `demo.launch` (Gradio 6 takes css/js there).
# Gradio keeps each session's state (about 0.1 MB here, plus ours) for an hour after its tab
# closes, and API clients never say goodbye: past this many sessions the least recently
# used one is dropped, so memory stays bounded however many visitors come and go.
MAX_SESSIONS = 500
LAUNCH_OPTIONS = {"css": CSS, "js": JS, "state_session_capacity": MAX_SESSIONS}

LEGEND = (
    f'<span style="background:{PROMPT_COLOR};color:#111;padding:0 .4em;border-radius:4px">Once 7454</span> '
    "a token of your prompt, with its id &nbsp; "
    f'<span style="background:{GENERATED_COLOR};color:#111;padding:0 .4em;border-radius:4px">of +286</span> '
    "a token the model wrote (its id marked +)"
)


def highlighted_tokens(stepper: TokenStepper | None) -> gr.HighlightedText:
    """Every token with its id; prompt and generated tokens in two colours (and `+` ids)."""
    if stepper is None:
        return gr.HighlightedText(value=[], color_map={})
    texts = stepper.lm.texts
    entries: list[tuple[str, str]] = []
    color_map: dict[str, str] = {}
    for position, token_id in enumerate(stepper.ids):
        generated = position >= stepper.prompt_length
        category = f"+{token_id}" if generated else str(token_id)
        entries.append((visible_whitespace(texts.text(token_id)), category))
        color_map[category] = GENERATED_COLOR if generated else PROMPT_COLOR
    return gr.HighlightedText(value=entries, color_map=color_map)


def inline_code(text: str) -> str:
    """`text` as a Markdown code span, whatever backticks it holds (CommonMark's rule)."""
    if "`" not in text:
        return f"`{text}`"
    fence = "`" * (max(len(run) for run in re.findall(r"`+", text)) + 1)
    return f"{fence} {text} {fence}"


def label_key(token_id: int, token: str) -> str:
    """A gr.Label key: the token with visible whitespace and its id (ids keep keys unique)."""
    return f"{visible_whitespace(token)} ({token_id})"


def render(stepper: TokenStepper | None, note: str = "") -> tuple[Any, ...]:
    """Component values for one state: (state, tokens, topk, status, token table, top-k table, text)."""
    if stepper is None:
        return (None, highlighted_tokens(None), {}, note, [], [], "")
    lm = stepper.lm
    texts = lm.texts
    token_rows = [
        [
            position,
            token_id,
            visible_whitespace(texts.text(token_id)),
            "prompt" if position < stepper.prompt_length else "generated",
        ]
        for position, token_id in enumerate(stepper.ids)
    ]
    lines = [
        f"**{stepper.prompt_length}** prompt tokens · **{len(stepper.generated_ids)}** generated"
        + (f" · context {len(stepper.ids)}/{lm.context_length}" if lm.context_length else "")
    ]
    if stepper.room_left is not None and stepper.room_left <= 0:
        lines.append(context_full_message(lm))
        top, rest = [], 0.0
    else:
        top, rest = stepper.next_top(TOP_K)
        best = top[0]
        lines.append(
            f"Most likely next token: {inline_code(visible_whitespace(best.token))} (id {best.token_id}) "
            f"with {best.prob:.1%}. The other {lm.vocab_size - len(top):,} tokens share {rest:.1%}."
        )
    if note:
        lines.append(note)
    return (
        stepper,
        highlighted_tokens(stepper),
        {label_key(c.token_id, c.token): c.prob for c in top},
        "\n\n".join(lines),
        token_rows,
        [[c.token_id, visible_whitespace(c.token), round(c.prob, 6)] for c in top],
        stepper.text(),
    )


def step_note(step: Step) -> str:
    """What the status says after a step: the chosen token, and why a run stopped."""
    note = f"Appended {inline_code(visible_whitespace(step.token))} (id {step.token_id}, p = {step.prob:.4f})."
    if step.stop_reason is not None:
        note += f" **Stopped:** {STOP_REASON_TEXT[step.stop_reason]}."
    return note


def new_stepper(lm: LanguageModel, prompt: Any) -> TokenStepper:
    """A stepper for text typed on the page or sent to the API; PromptError says what is wrong."""
    if not isinstance(prompt, str):
        raise PromptError(f"The prompt must be text, got {type(prompt).__name__}.")
    if len(prompt) > MAX_PROMPT_CHARS:
        # Refused before tokenizing: a huge paste must not keep the server busy.
        raise PromptError(
            f"The prompt is {len(prompt):,} characters long; tokstep takes at most {MAX_PROMPT_CHARS:,} "
            f"characters, and {lm.name} reads at most {lm.context_length or 'a limited number of'} tokens. "
            "Use a shorter prompt."
        )
    return TokenStepper.from_text(lm, prompt)


def start(lm: LanguageModel, prompt: str) -> tuple[Any, ...]:
    """A fresh state for `prompt`; a prompt the model cannot take shows why in the status."""
    try:
        return render(new_stepper(lm, prompt))
    except PromptError as error:
        return render(None, f"⚠️ {error}")


def _current(lm: LanguageModel, stepper: TokenStepper | None, prompt: str) -> TokenStepper:
    """The user's stepper, or a new one from the prompt box (e.g. after the state expired)."""
    if stepper is not None:
        return stepper
    try:
        return new_stepper(lm, prompt)
    except PromptError as error:
        raise gr.Error(str(error), title="Cannot step") from None


def step_once(lm: LanguageModel, stepper: TokenStepper | None, prompt: str) -> tuple[Any, ...]:
    """Append exactly one greedy token."""
    stepper = _current(lm, stepper, prompt)
    if stepper.room_left is not None and stepper.room_left <= 0:
        gr.Warning(context_full_message(lm))
        return render(stepper, f"**Stopped:** {STOP_REASON_TEXT['context_full']}.")
    return render(stepper, step_note(stepper.step(TOP_K)))


def autorun(
    lm: LanguageModel, stepper: TokenStepper | None, prompt: str, n_tokens: float, speed: float
) -> Iterator[tuple[Any, ...]]:
    """Append up to n_tokens greedy tokens, one page update each, at `speed` tokens/s."""
    n_tokens = whole_number(n_tokens, "Tokens to auto-run", 1, MAX_AUTORUN_TOKENS)
    pause = 1.0 / number(speed, "Speed", MIN_SPEED, MAX_SPEED)
    stepper = _current(lm, stepper, prompt)
    if stepper.room_left is not None and stepper.room_left <= 0:
        gr.Warning(context_full_message(lm))
        yield render(stepper, f"**Stopped:** {STOP_REASON_TEXT['context_full']}.")
        return
    for count in range(1, n_tokens + 1):
        started = time.monotonic()
        step = stepper.step(TOP_K)
        note = step_note(step)
        if step.stop_reason is None and count == n_tokens:
            note += f" **Stopped:** {STOP_REASON_TEXT['max_new_tokens']}."
        yield render(stepper, note)
        if step.stop_reason is not None:
            return
        if count < n_tokens:
            time.sleep(max(0.0, pause - (time.monotonic() - started)))


def whole_number(value: Any, name: str, low: int, high: int) -> int:
    """`value` as an int in low..high, or a gr.Error that names the argument and the range."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise gr.Error(f"{name} must be a whole number from {low} to {high}, got {value!r}.")
    return value


def number(value: Any, name: str, low: float, high: float) -> float:
    """`value` as a float in low..high, or a gr.Error that names the argument and the range."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise gr.Error(f"{name} must be a number from {low:g} to {high:g}, got {value!r}.")
    return float(value)


def api_generate(lm: LanguageModel, prompt: Any, max_new_tokens: Any) -> Iterator[dict]:
    """The /generate endpoint: one JSON object per token, at full speed."""
    max_new_tokens = whole_number(max_new_tokens, "max_new_tokens", 1, lm.context_length or MAX_API_TOKENS)
    try:
        stepper = new_stepper(lm, prompt)
    except PromptError as error:
        raise gr.Error(str(error)) from None
    for count in range(1, max_new_tokens + 1):
        step = stepper.step(TOP_K)
        stop_reason = step.stop_reason or ("max_new_tokens" if count == max_new_tokens else None)
        yield {
            "text": stepper.text(),
            "token_id": step.token_id,
            "token": step.token,
            "prob": step.prob,
            "top": [list(candidate) for candidate in step.top],
            "rest_prob": step.rest_prob,
            "position": step.position,
            "stop_reason": stop_reason,
        }
        if stop_reason is not None:
            return


@dataclass(frozen=True)
class ServerLimits:
    """How much work the server takes at once; past `max_queue` waiting events, users are told
    "Queue is full! Please try again." instead of waiting without end."""

    max_queue: int = 64  # events waiting for a worker, all users together
    autorun_workers: int = 32  # Auto-runs at once: mostly pausing between tokens, so many fit
    workers: int = 8  # Steps, resets and /generate calls at once (forward passes take turns anyway)


def create_demo(
    lm: LanguageModel,
    *,
    prompt: str = DEFAULT_PROMPT,
    notice: str | None = None,
    limits: ServerLimits = ServerLimits(),  # noqa: B008 (frozen, so sharing the default is safe)
) -> gr.Blocks:
    """The tokstep page for `lm`. `notice` is shown at the top (e.g. why a fallback model runs)."""
    with gr.Blocks(title="tokstep: watch a language model write") as demo:
        gr.Markdown(
            "# tokstep: watch a language model write, one token at a time\n"
            f"Model: **{lm.name}**. Type a prompt, see its tokens and the model's most likely next "
            "tokens, then press **Step** (or Ctrl+Enter) to append the most likely one, or **Auto-run** "
            "to keep going."
        )
        if notice:
            gr.Markdown(f"⚠️ {notice}", elem_id="notice")
        prompt_box = gr.Textbox(value=prompt, label="Prompt", lines=2, max_lines=8, elem_id="prompt")
        with gr.Row():
            step_button = gr.Button("Step", variant="primary", elem_id="step")
            autorun_button = gr.Button("Auto-run", variant="secondary", elem_id="autorun")
            stop_button = gr.Button("Stop", variant="stop", elem_id="stop")
            reset_button = gr.Button("Reset", elem_id="reset")
        with gr.Row():
            n_tokens = gr.Slider(
                1,
                MAX_AUTORUN_TOKENS,
                value=DEFAULT_AUTORUN_TOKENS,
                step=1,
                label="Tokens to auto-run",
                elem_id="autorun-tokens",
            )
            speed = gr.Slider(
                0.5, 20, value=DEFAULT_SPEED, step=0.5, label="Speed (tokens per second)", elem_id="speed"
            )
        tokens = gr.HighlightedText(
            label="Tokens, each with its id",
            elem_id="tokens",
            show_legend=False,
            combine_adjacent=False,
            show_inline_category=True,
        )
        gr.HTML(LEGEND, elem_id="legend")
        topk = gr.Label(
            label=f"Next token: top {TOP_K} (probabilities over the whole vocabulary)",
            num_top_classes=TOP_K,
            elem_id="topk",
        )
        status = gr.Markdown(elem_id="status")
        text_box = gr.Textbox(label="Text so far", interactive=False, lines=3, elem_id="text")
        with gr.Accordion("The notebook's tables", open=False, elem_id="tables"):
            token_table = gr.Dataframe(
                headers=["position", "id", "token", "from"], label="Tokens", interactive=False, elem_id="token-table"
            )
            topk_table = gr.Dataframe(
                headers=["id", "token", "p"], label=f"Top {TOP_K} next tokens", interactive=False, elem_id="topk-table"
            )
        state = gr.State(None, time_to_live=STATE_TTL_S)
        view = [state, tokens, topk, status, token_table, topk_table, text_box]

        def on_start(text: str) -> tuple[Any, ...]:
            return start(lm, text)

        def on_step(stepper: TokenStepper | None, text: str) -> tuple[Any, ...]:
            return step_once(lm, stepper, text)

        def on_autorun(stepper: TokenStepper | None, text: str, n: float, pace: float) -> Iterator[tuple[Any, ...]]:
            yield from autorun(lm, stepper, text, n, pace)

        autorun_event = autorun_button.click(
            on_autorun,
            inputs=[state, prompt_box, n_tokens, speed],
            outputs=view,
            api_name="autorun",
            api_visibility="undocumented",
            # Raw inputs: the checks in `autorun` give a clear message for any value an API sends.
            preprocess=False,
            concurrency_limit=limits.autorun_workers,
            show_progress="hidden",
        )
        step_event = step_button.click(
            on_step,
            inputs=[state, prompt_box],
            outputs=view,
            api_name="step",
            api_visibility="undocumented",
            show_progress="hidden",
        )
        # Editing the prompt, Reset and the page's first load all start over from the prompt;
        # each also stops a running Auto-run or Step, which would otherwise write the old text back.
        gr.on(
            [prompt_box.change, reset_button.click, demo.load],
            on_start,
            inputs=prompt_box,
            outputs=view,
            api_name="reset",
            api_visibility="undocumented",
            cancels=[autorun_event, step_event],
            trigger_mode="always_last",
            show_progress="hidden",
        )
        # Choosing an example changes the prompt box, which starts over (the change event above).
        gr.Examples([[DEFAULT_PROMPT], [NOTEBOOK_PROMPT]], inputs=prompt_box, label="Example prompts")
        stop_button.click(None, cancels=[autorun_event])

        def generate(prompt: str, max_new_tokens: int = 20) -> Iterator[dict]:
            """Greedy generation streamed one token at a time: each update is
            {text, token_id, token, prob, top: [[token_id, token, prob], ...], rest_prob, position, stop_reason}."""
            yield from api_generate(lm, prompt, max_new_tokens)

        gr.api(generate, api_name="generate")
    demo.queue(default_concurrency_limit=limits.workers, max_size=limits.max_queue)
    return demo
