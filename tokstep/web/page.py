"""The Gradio page: `create_demo(lm)` wires components to callbacks that call the engine
and hand its state to `tokstep.web.views.render`.

Per-user state is one `TokenStepper` in a `gr.State` (token ids, steps, KV cache). The
model itself is shared read-only; its forward passes take turns on a lock (see
`LanguageModel.forward_lock`), while Auto-run's pauses between tokens overlap freely.
Every event takes its inputs raw (`preprocess=False`) and checks them itself, so any value
an API client sends gets a clear message. The one exception is loading a run file: Gradio's
preprocessing is what makes sure the path it gets is a file the visitor uploaded.

For teachers: the page opens a preset from its URL (`?prompt=...&steps=N`, see
tokstep.core.presets), "Copy link" gives the link to the current state, and a run exports to and
loads from a JSON file (tokstep.core.run_files).

Model choice: `create_demo(lm, models=[...])` offers `lm` and the operator's allowlist in a
dropdown (tokstep.web.model_choice loads each once and keeps it). Each session's model name is a
gr.State (`model_choice`) that every event reads; visitors can only pick a name on the list.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import gradio as gr

from tokstep.core.loading import load
from tokstep.core.model import LanguageModel, ModelLoadError
from tokstep.core.presets import Preset, apply_preset, has_preset, link_reproduces, parse_preset, preset_query
from tokstep.core.run_files import (
    MAX_RUN_BYTES,
    RunFileError,
    dumps_run,
    export_run,
    read_run_file,
    restore_run,
    run_model_name,
)
from tokstep.core.sampling import SamplingSettings
from tokstep.core.stepper import STOP_REASON_TEXT, PromptError, RunStopped, TokenStepper, context_full_message
from tokstep.runtimes.in_process import InProcessRuntime
from tokstep.web.api import generate_updates, model_or_error, new_stepper, number, sampling_settings, whole_number
from tokstep.web.assets import JS
from tokstep.web.assets import LAUNCH_OPTIONS as PAGE_OPTIONS
from tokstep.web.chat_section import add_chat
from tokstep.web.model_choice import ModelCache, allowed_models
from tokstep.web.views import (
    LEGEND,
    TOKEN_TABLE_HEADERS,
    TOPK_TABLE_HEADERS,
    ViewSettings,
    render,
    step_note,
    token_id_of_label_key,
)

__all__ = ["JS", "LAUNCH_OPTIONS", "ServerLimits", "create_demo"]

DEFAULT_PROMPT = "Once upon a time"
NOTEBOOK_PROMPT = "Once upon a time, generative models"
DEFAULT_TOP_K, MAX_TOP_K = 5, 20
DEFAULT_AUTORUN_TOKENS = 20
MAX_AUTORUN_TOKENS = 256
DEFAULT_SPEED = 3.0  # tokens per second: slow enough to read each token as it comes
MIN_SPEED, MAX_SPEED = 0.5, 20.0
GREEDY, SAMPLE = "Greedy (most likely)", "Sample (seeded)"
# A tab closed or idle this long drops its state (seconds since the last update).
STATE_TTL_S = 3600
# The sampling sliders' ranges: a link or file may only set what the page can show.
TEMPERATURE_RANGE, SAMPLE_TOP_K_MAX, TOP_P_MIN = (0.1, 2.0), 100, 0.05
EXPORT_TTL_S = 600  # exported files are copied to Gradio's cache at once; ours can go soon after

GENERATE_DOC = """Generation streamed one token at a time, greedy unless `sample` is true (then seeded: the
same seed and settings give the same tokens). Each update is {text, token_id, token, prob, top: [[token_id,
token, prob], ...], rest_prob, position, chosen_by, rank, entropy, sampling_prob, stop_reason}; probabilities
are always the model's own."""
MODEL_ARGUMENT_DOC = """ `model` is one of the models the page offers ("" = the default); another name is refused."""

# "Copy link": the server sends the query ("?prompt=..."); the browser makes it a full link to
# the demo (its root, also inside an iframe or a <gradio-app>) and copies it where allowed.
COPY_LINK_JS = """
(query) => {
  if (!query) { return query; }
  const root = (window.gradio_config && window.gradio_config.root) || (location.origin + location.pathname);
  const url = root.replace(/\\/?$/, "/") + query;
  try { navigator.clipboard.writeText(url).catch(() => {}); } catch (error) { /* no clipboard here */ }
  return url;
}
"""


@dataclass(frozen=True)
class ServerLimits:
    """How much work the server takes at once; past `max_queue` waiting events, users are told
    "Queue is full! Please try again." instead of waiting without end."""

    max_queue: int = 64  # events waiting for a worker, all users together
    autorun_workers: int = 32  # Auto-runs at once (page and chat each): mostly pausing between tokens
    # /generate streams at once. Their steps share batched forward passes (tokstep.runtimes.scheduler),
    # so a class's worth costs about one pass per token; more wait in the queue.
    stream_workers: int = 32
    workers: int = 8  # Steps, resets and the like at once (their passes are batched too)

    @property
    def threads(self) -> int:
        """Threads the server needs so that every event allowed to run at once has one."""
        return 2 * self.autorun_workers + self.stream_workers + self.workers


# max_file_size: uploads past it are refused by Gradio before they reach tokstep; a little
# above what a run file may be, so a file just over the limit still gets tokstep's own message.
# max_threads: Gradio runs each step of an event in a pool of threads (40 by default); every
# event that may run at once gets one, or streams past the 40th would wait with a free model.
LAUNCH_OPTIONS = {**PAGE_OPTIONS, "max_file_size": MAX_RUN_BYTES + 1_000_000, "max_threads": ServerLimits().threads}


def read_settings(
    top_k_size: Any, mode: Any, temperature: Any, sample_top_k: Any, top_p: Any, seed: Any, score: Any
) -> ViewSettings:
    """The page's settings as sent, checked; gr.Error names a bad one."""
    if mode not in (GREEDY, SAMPLE):
        raise gr.Error(f"mode must be {GREEDY!r} or {SAMPLE!r}, got {mode!r}.")
    return ViewSettings(
        top_k=whole_number(top_k_size, "Top-k size", 1, MAX_TOP_K),
        sampling=sampling_settings(mode == SAMPLE, temperature, sample_top_k, top_p, seed),
        score_prompt=bool(score),
    )


def current(lm: LanguageModel, stepper: TokenStepper | None, prompt: Any) -> TokenStepper:
    """The user's stepper, or a new one from the prompt box (e.g. after the state expired)."""
    if stepper is not None:
        return stepper
    try:
        return new_stepper(lm, prompt)
    except PromptError as error:
        raise gr.Error(str(error), title="Cannot step") from None


def start(lm: LanguageModel, prompt: Any, settings: ViewSettings) -> tuple[Any, ...]:
    """A fresh state for `prompt`; a prompt the model cannot take shows why in the status."""
    try:
        return render(new_stepper(lm, prompt), settings)
    except PromptError as error:
        return render(None, settings, f"⚠️ {error}")


def append(stepper: TokenStepper, settings: ViewSettings, token_id: int | None = None) -> tuple[Any, ...]:
    """Append one token (the user's, a seeded draw, or the most likely) and render."""
    if stepper.room_left is not None and stepper.room_left <= 0:
        gr.Warning(context_full_message(stepper.lm))
        return render(stepper, settings, f"**Stopped:** {STOP_REASON_TEXT['context_full']}.")
    step = stepper.step(settings.top_k, token_id=token_id, sampling=settings.sampling)
    return render(stepper, settings, step_note(step))


def autorun(stepper: TokenStepper, settings: ViewSettings, n_tokens: int, pause_s: float) -> Iterator[tuple[Any, ...]]:
    """Append up to n_tokens tokens, one page update each, a pause apart."""
    if stepper.room_left is not None and stepper.room_left <= 0:
        gr.Warning(context_full_message(stepper.lm))
        yield render(stepper, settings, f"**Stopped:** {STOP_REASON_TEXT['context_full']}.")
        return
    run = stepper.start_run()
    try:
        for count in range(1, n_tokens + 1):
            started = time.monotonic()
            try:
                step = stepper.step(settings.top_k, sampling=settings.sampling, run=run)
            except RunStopped:  # Stop, Undo or a pick came: the page shows the sequence as it is
                return
            note = step_note(step)
            if step.stop_reason is None and count == n_tokens:
                note += f" **Stopped:** {STOP_REASON_TEXT['max_new_tokens']}."
            yield render(stepper, settings, note)
            if step.stop_reason is not None:
                return
            if count < n_tokens:
                time.sleep(max(0.0, pause_s - (time.monotonic() - started)))
    finally:
        stepper.end_run()  # ended or stopped: the class's next passes do not wait for it


def undo(stepper: TokenStepper, settings: ViewSettings) -> tuple[Any, ...]:
    """Take back the last generated token: the page is as it was before it."""
    stepper.stop_runs()  # Undo cancels Auto-run: a step of it may not land after the undo
    if not stepper.can_undo:
        gr.Warning("Nothing to undo: only the prompt is left.")
        return render(stepper, settings, "Nothing to undo: only the prompt is left.")
    step = stepper.undo()
    return render(stepper, settings, f"Took back `{step.token_id}`.")


def sampling_fits_page(sampling: SamplingSettings | None) -> str | None:
    """None when the page's sliders can show `sampling`; otherwise a sentence saying why not."""
    if sampling is None:
        return None
    low, high = TEMPERATURE_RANGE
    if not low <= sampling.temperature <= high:
        return f"the page's temperature goes from {low:g} to {high:g}, not {sampling.temperature:g}"
    if sampling.top_k > SAMPLE_TOP_K_MAX:
        return f"the page samples from at most the top {SAMPLE_TOP_K_MAX}, not {sampling.top_k}"
    if sampling.top_p < TOP_P_MIN:
        return f"the page's top-p is at least {TOP_P_MIN:g}, not {sampling.top_p:g}"
    return None


def sampling_values(sampling: SamplingSettings | None) -> tuple[Any, ...]:
    """Values for the mode, temperature, sample top-k, top-p and seed controls (skip: unchanged)."""
    if sampling is None:
        return (GREEDY, gr.skip(), gr.skip(), gr.skip(), gr.skip())
    return (SAMPLE, sampling.temperature, sampling.top_k, sampling.top_p, sampling.seed)


def open_preset(
    lm: LanguageModel, preset: Preset, prompt: Any, settings: ViewSettings
) -> tuple[tuple[Any, ...], str | None, SamplingSettings | None]:
    """The view for a page opened with a preset link (on the model already chosen for it), the
    prompt to show, and the sampling to set."""
    problems = []
    if (why := sampling_fits_page(preset.sampling)) is not None:
        problems.append(f"{why}; stepping greedily")
        preset = replace(preset, sampling=None)
    default = prompt if isinstance(prompt, str) else DEFAULT_PROMPT
    stepper, more = apply_preset(lm, preset, default, settings.top_k)
    problems = [*more, *problems]
    chosen = replace(settings, sampling=preset.sampling)
    how = "sampled with the link's seed" if preset.sampling else "the most likely each time"
    note = f"Opened from a link: {len(stepper.steps)} tokens generated ({how})." if stepper else ""
    if problems:
        message = "The link has a problem: " + "; ".join(problems) + "."
        gr.Warning(message)
        note = f"⚠️ {message} {note}".strip()
    if stepper is None:
        return render(None, chosen, note), None, None
    return render(stepper, chosen, note), stepper.prompt_text, preset.sampling


def write_export(folder: Path, run: dict) -> str:
    """Write a run file into `folder` (clearing out old ones) and return its path."""
    now = time.time()
    for old in folder.glob("*/tokstep-run.json"):
        if now - old.stat().st_mtime > EXPORT_TTL_S:
            old.unlink(missing_ok=True)
            old.parent.rmdir()
    path = Path(tempfile.mkdtemp(dir=folder)) / "tokstep-run.json"  # one folder each: the name stays simple
    path.write_text(dumps_run(run), encoding="utf-8")
    return str(path)


def status_only(note: str) -> tuple[Any, ...]:
    """View outputs that change only the status line: the state, tokens and tables stay."""
    return (gr.skip(), gr.skip(), gr.skip(), note, gr.skip(), gr.skip(), gr.skip())


def switch_model(
    cache: ModelCache, choice: Any, name: str, stepper: TokenStepper | None, text: Any, settings: ViewSettings
) -> Iterator[tuple[Any, ...]]:
    """Move a session from model `name` to `choice`. Yields the view, the session's model name and
    the dropdown: first a "Loading" status (when `choice` is not loaded yet), then the result.

    On success the session starts over from the prompt box on the new model. On failure a
    warning says why, the dropdown goes back to `name`, and the tokens stay as they were.
    """
    if not cache.is_allowed(choice):  # only an API client can send this: the dropdown offers the list
        raise gr.Error(cache.refusal(choice), title="Model not offered")
    choice = choice.strip()
    if choice == name:
        yield (*(gr.skip(),) * 7, gr.skip(), gr.skip())
        return
    if not cache.is_loaded(choice):
        loading = f"⏳ Loading **{choice}**… (the first time takes a while; the page stays on **{name}** until then)"
        yield (*status_only(loading), gr.skip(), gr.Dropdown(interactive=False))
    try:
        lm = cache.get(choice)
    except ModelLoadError as error:
        message = f"Could not switch to '{choice}': {error} The page stays on '{name}'."
        gr.Warning(message, title="Model not loaded")
        shown = render(stepper, settings, f"⚠️ {message}") if stepper is not None else status_only(f"⚠️ {message}")
        yield (*shown, gr.skip(), gr.Dropdown(value=name, interactive=True))
        return
    try:
        shown = render(new_stepper(lm, text), settings, f"Switched to **{choice}**: started over from the prompt.")
    except PromptError as error:
        shown = render(None, settings, f"Switched to **{choice}**. ⚠️ {error}")
    yield (*shown, choice, gr.Dropdown(value=choice, interactive=True))


def create_demo(
    lm: LanguageModel,
    *,
    prompt: str = DEFAULT_PROMPT,
    notice: str | None = None,
    limits: ServerLimits = ServerLimits(),  # noqa: B008 (frozen, so sharing the default is safe)
    models: Sequence[str] | None = None,
    runtime: InProcessRuntime | None = None,
) -> gr.Blocks:
    """The tokstep page for `lm`. `notice` is shown at the top (e.g. why a fallback model runs).

    `models` are the other models visitors may choose (the operator's allowlist; `lm` is
    always offered, first, and is every session's default). Without it the page offers only
    `lm`, and a run file made with another model loads on `lm` with a warning, as it always did;
    with it, a run file switches to its model when that is offered and is refused otherwise.

    `runtime` runs every model's passes (a new `InProcessRuntime` when not given: one lock and one
    bound on kept caches for the page's models); the page serves `runtime.serve(lm)`, and `lm`
    itself is left as it was.
    """
    runtime = runtime if runtime is not None else InProcessRuntime()
    lm = runtime.serve(lm)
    offers_choice = models is not None
    allowed = allowed_models(lm.name, models or ())
    cache = ModelCache(allowed, loaded=[lm], loader=lambda name: runtime.serve(load(name)))
    default_model = cache.default
    with gr.Blocks(title="tokstep: watch a language model write") as demo:
        gr.Markdown(
            "# tokstep: watch a language model write, one token at a time\n"
            "Type a prompt, see its tokens and the model's most likely next "
            "tokens, then press **Step** (or Ctrl+Enter) to append the most likely one, click a "
            "candidate to take it instead, or **Auto-run** to keep going."
        )
        if notice:
            gr.Markdown(f"⚠️ {notice}", elem_id="notice")
        model_dropdown = gr.Dropdown(
            choices=list(cache.allowed), value=default_model, label="Model", elem_id="model",
            interactive=len(cache.allowed) > 1, allow_custom_value=False,
            info="Another model loads when first chosen, then the page starts over from the prompt.",
        )  # fmt: skip
        prompt_box = gr.Textbox(value=prompt, label="Prompt", lines=2, max_lines=8, elem_id="prompt")
        with gr.Row():
            step_button = gr.Button("Step", variant="primary", elem_id="step")
            autorun_button = gr.Button("Auto-run", variant="secondary", elem_id="autorun")
            stop_button = gr.Button("Stop", variant="stop", elem_id="stop")
            undo_button = gr.Button("Undo", elem_id="undo")
            reset_button = gr.Button("Reset", elem_id="reset")
        with gr.Row():
            n_tokens = gr.Slider(
                1, MAX_AUTORUN_TOKENS, value=DEFAULT_AUTORUN_TOKENS, step=1,
                label="Tokens to auto-run", elem_id="autorun-tokens",
            )  # fmt: skip
            speed = gr.Slider(
                MIN_SPEED, MAX_SPEED, value=DEFAULT_SPEED, step=0.5, label="Speed (tokens per second)", elem_id="speed"
            )
        tokens = gr.HighlightedText(
            label="Tokens, each with its id", elem_id="tokens", show_legend=False,
            combine_adjacent=False, show_inline_category=True,
        )  # fmt: skip
        gr.HTML(LEGEND, elem_id="legend")
        topk = gr.Label(label="Next token: the model's top candidates (click one to take it)", elem_id="topk")
        status = gr.Markdown(elem_id="status")
        text_box = gr.Textbox(label="Text so far", interactive=False, lines=3, elem_id="text")
        with gr.Row(elem_id="share"):
            copy_link = gr.Button("Copy link", elem_id="copy-link")
            export_button = gr.Button("Export run (JSON)", elem_id="export")
            import_button = gr.UploadButton(
                "Load a run", elem_id="import", file_types=[".json"], type="filepath", file_count="single"
            )
        with gr.Row():
            link_box = gr.Textbox(
                label="Link to this state (prompt, tokens so far, settings)", interactive=False,
                buttons=["copy"], elem_id="link",
            )  # fmt: skip
            export_file = gr.File(label="Run file", interactive=False, elem_id="export-file")
        with gr.Accordion("Choosing: greedy or sampling, top-k size", open=False, elem_id="choosing"):
            with gr.Row():
                mode = gr.Radio([GREEDY, SAMPLE], value=GREEDY, label="How Step and Auto-run choose", elem_id="mode")
                top_k_size = gr.Slider(
                    1, MAX_TOP_K, value=DEFAULT_TOP_K, step=1, label="Top-k size (candidates shown)",
                    elem_id="topk-size",
                )  # fmt: skip
            with gr.Row():
                temperature = gr.Slider(
                    *TEMPERATURE_RANGE, value=1.0, step=0.05, label="Temperature", elem_id="temperature"
                )
                sample_top_k = gr.Slider(
                    0, SAMPLE_TOP_K_MAX, value=0, step=1, label="Sample from top k (0 = all)", elem_id="top-k"
                )
                top_p = gr.Slider(TOP_P_MIN, 1.0, value=1.0, step=0.05, label="Top-p (1 = all)", elem_id="top-p")
                seed = gr.Number(value=0, precision=0, minimum=0, label="Seed", elem_id="seed")
            score_box = gr.Checkbox(
                label="Colour prompt tokens by how likely the model found them", elem_id="score-prompt"
            )
        with gr.Accordion("The notebook's tables", open=False, elem_id="tables"):
            token_table = gr.Dataframe(
                headers=TOKEN_TABLE_HEADERS, label="Tokens", interactive=False, elem_id="token-table"
            )
            topk_table = gr.Dataframe(
                headers=TOPK_TABLE_HEADERS, label="Top next tokens", interactive=False, elem_id="topk-table"
            )
        state = gr.State(None, time_to_live=STATE_TTL_S)
        # The session's model name, read by every event. No time to live: it is a short string,
        # and a page that lost it would quietly fall back to the default model.
        model_choice = gr.State(default_model)
        view = [state, tokens, topk, status, token_table, topk_table, text_box]
        settings = [top_k_size, mode, temperature, sample_top_k, top_p, seed, score_box]
        sampling_controls = [mode, temperature, sample_top_k, top_p, seed]
        export_folder = Path(tempfile.mkdtemp(prefix="tokstep-exports-"))
        raw = {"preprocess": False, "show_progress": "hidden"}

        # `model_choice` above is the session's model name, and `lm_for(name)` the loaded model
        # for a name (gr.Error when it is not offered or fails): the chat section uses both.
        def lm_for(name: str) -> LanguageModel:
            return model_or_error(cache, name)

        # Chat mode: the same model, stepping the assistant's reply (closed until asked for).
        with gr.Accordion("Chat mode: step through a chat model's reply", open=False, elem_id="chat-mode"):
            add_chat(model_choice, lm_for, autorun_workers=limits.autorun_workers)

        def on_start(name: str, text: Any, *values: Any) -> tuple[Any, ...]:
            return start(lm_for(name), text, read_settings(*values))

        def on_step(stepper: TokenStepper | None, name: str, text: Any, *values: Any) -> tuple[Any, ...]:
            chosen = read_settings(*values)
            return append(current(lm_for(name), stepper, text), chosen)

        def on_autorun(
            stepper: TokenStepper | None, name: str, text: Any, n: Any, pace: Any, *values: Any
        ) -> Iterator[tuple[Any, ...]]:
            n = whole_number(n, "Tokens to auto-run", 1, MAX_AUTORUN_TOKENS)
            pause_s = 1.0 / number(pace, "Speed", MIN_SPEED, MAX_SPEED)
            chosen = read_settings(*values)
            yield from autorun(current(lm_for(name), stepper, text), chosen, n, pause_s)

        def on_undo(stepper: TokenStepper | None, name: str, text: Any, *values: Any) -> tuple[Any, ...]:
            return undo(current(lm_for(name), stepper, text), read_settings(*values))

        def on_stop(stepper: TokenStepper | None, *values: Any) -> tuple[Any, ...]:
            # Cancelling Auto-run does not stop the thread running its current step: that step
            # may still append a token after the page's last update. Wait for it, and show the
            # sequence as it is.
            if stepper is None:
                return tuple(gr.skip() for _ in view)
            stepper.stop_runs()
            return render(stepper, read_settings(*values), "**Stopped.**")

        def on_edit(stepper: TokenStepper | None, name: str, text: Any, *values: Any) -> tuple[Any, ...]:
            # A link or a run file set the prompt together with its state: nothing to redo.
            if stepper is not None and stepper.prompt_text == text:
                return tuple(gr.skip() for _ in view)
            return start(lm_for(name), text, read_settings(*values))

        def on_model(
            choice: Any, stepper: TokenStepper | None, name: str, text: Any, *values: Any
        ) -> Iterator[tuple[Any, ...]]:
            yield from switch_model(cache, choice, name, stepper, text, read_settings(*values))

        def on_load(request: gr.Request, name: str, text: Any, *values: Any) -> Iterator[tuple[Any, ...]]:
            chosen = read_settings(*values)
            params = dict(request.query_params) if request is not None else {}
            unchanged = (gr.skip(),) * (1 + len(sampling_controls) + 2)  # prompt, sampling, model, dropdown
            if not has_preset(params):
                yield (*start(lm_for(name), text, chosen), *unchanged)
                return
            preset = parse_preset(params)
            chosen_model, problem = name, None
            if preset.model is not None and preset.model != name:
                if not cache.is_allowed(preset.model):
                    problem = f"{cache.refusal(preset.model).rstrip('.')}; running {name}"
                else:
                    if not cache.is_loaded(preset.model):
                        yield (*status_only(f"⏳ Loading **{preset.model}** for this link…"), *unchanged)
                    try:
                        cache.get(preset.model)
                        chosen_model = preset.model
                    except ModelLoadError as error:
                        why = str(error).rstrip(".")
                        problem = f"the model '{preset.model}' could not be loaded ({why}); running {name}"
            if problem is not None:
                preset = replace(preset, problems=(*preset.problems, problem))
            shown, prompt_text, sampling = open_preset(lm_for(chosen_model), preset, text, chosen)
            new_prompt = prompt_text if prompt_text is not None and prompt_text != text else gr.skip()
            controls = sampling_values(sampling) if sampling else (gr.skip(),) * len(sampling_controls)
            switched = (chosen_model, chosen_model) if chosen_model != name else (gr.skip(), gr.skip())
            yield (*shown, new_prompt, *controls, *switched)

        def on_link(stepper: TokenStepper | None, name: str, text: Any, *values: Any) -> str:
            chosen = read_settings(*values)
            stepper = current(lm_for(name), stepper, text)
            if not link_reproduces(stepper, chosen.sampling):
                gr.Warning(
                    "This link gives the prompt and the number of tokens, stepped with the current settings: "
                    "tokens you picked by hand or stepped with other settings may come out differently. "
                    "Export the run to keep them exactly."
                )
            # The model goes into the link only when it is not the default, so plain links stay short.
            model = stepper.lm.name if stepper.lm.name != default_model else None
            return preset_query(stepper, chosen.sampling, model)

        def on_export(stepper: TokenStepper | None, name: str, text: Any, *values: Any) -> str:
            chosen = read_settings(*values)
            run = export_run(current(lm_for(name), stepper, text), chosen.top_k, chosen.sampling, chosen.score_prompt)
            return write_export(export_folder, run)

        def run_model(run: dict, name: str) -> LanguageModel:
            """The model to restore a run file on: the file's own when the page offers a choice."""
            wanted = run_model_name(run)
            if not offers_choice or wanted is None or wanted == name:
                return lm_for(name)
            if not cache.is_allowed(wanted):
                raise RunFileError(
                    f"This run was made with the model '{wanted[:100]}', which this page does not offer "
                    f"({', '.join(cache.allowed)})."
                )
            try:
                return cache.get(wanted)
            except ModelLoadError as error:
                raise RunFileError(
                    f"This run was made with the model '{wanted}', which could not be loaded: {error}"
                ) from None

        def on_import(path: Any, name: str, text: Any) -> tuple[Any, ...]:
            # The file sets every setting, so the page's own are not read.
            if not isinstance(path, str):
                raise gr.Error("No file came with the upload.", title="Cannot load the run")
            try:
                run = read_run_file(path)
                run_lm = run_model(run, name)
                restored = restore_run(run_lm, run, MAX_TOP_K)
            except RunFileError as error:
                # gr.Error changes no output: the tokens, settings and model stay as they were.
                raise gr.Error(f"{error} Nothing on the page was changed.", title="Cannot load the run") from None
            warnings = list(restored.warnings)
            sampling = restored.sampling
            if (why := sampling_fits_page(sampling)) is not None:
                warnings.append(f"The file's sampling settings do not fit the page ({why}); the page steps greedily.")
                sampling = None
            for warning in warnings:
                gr.Warning(warning)
            settings_now = ViewSettings(restored.top_k, sampling, restored.score_prompt)
            switched = f" Switched to **{run_lm.name}**, the run's model." if run_lm.name != name else ""
            note = f"Loaded a run: {len(restored.stepper.steps)} generated tokens.{switched}" + "".join(
                f" ⚠️ {warning}" for warning in warnings
            )
            shown = render(restored.stepper, settings_now, note)
            new_prompt = restored.stepper.prompt_text if restored.stepper.prompt_text != text else gr.skip()
            return (
                *shown, new_prompt, restored.top_k, *sampling_values(sampling), restored.score_prompt, run_lm.name,
            )  # fmt: skip

        def on_view(stepper: TokenStepper | None, name: str, text: Any, *values: Any) -> tuple[Any, ...]:
            chosen = read_settings(*values)
            return render(stepper, chosen) if stepper is not None else start(lm_for(name), text, chosen)

        def on_pick(
            stepper: TokenStepper | None,
            name: str,
            text: Any,
            k: Any,
            how: Any,
            temp: Any,
            sample_k: Any,
            p: Any,
            draw_seed: Any,
            score: Any,
            event: gr.SelectData,
        ) -> tuple[Any, ...]:
            token_id = token_id_of_label_key(str(event.value))
            chosen = read_settings(k, how, temp, sample_k, p, draw_seed, score)
            stepper = current(lm_for(name), stepper, text)
            stepper.stop_runs()  # a pick cancels Auto-run: none of its steps may land after the pick
            if token_id is None:
                return render(stepper, chosen)
            return append(stepper, chosen, token_id=token_id)

        autorun_event = autorun_button.click(
            on_autorun, inputs=[state, model_choice, prompt_box, n_tokens, speed, *settings], outputs=view,
            api_name="autorun", api_visibility="undocumented", concurrency_limit=limits.autorun_workers, **raw,
        )  # fmt: skip
        step_event = step_button.click(
            on_step, inputs=[state, model_choice, prompt_box, *settings], outputs=view,
            api_name="step", api_visibility="undocumented", **raw,
        )  # fmt: skip
        undo_button.click(
            on_undo, inputs=[state, model_choice, prompt_box, *settings], outputs=view,
            api_name="undo", api_visibility="undocumented", cancels=[autorun_event], **raw,
        )  # fmt: skip
        topk.select(
            on_pick, inputs=[state, model_choice, prompt_box, *settings], outputs=view,
            api_visibility="private", cancels=[autorun_event], **raw,
        )  # fmt: skip
        gr.on(
            [control.change for control in settings], on_view, inputs=[state, model_choice, prompt_box, *settings],
            outputs=view, api_name="view", api_visibility="undocumented", trigger_mode="always_last", **raw,
        )  # fmt: skip
        # Reset, typing and choosing an example stop a running Auto-run or Step, which would
        # otherwise write the old text back.
        reset_button.click(
            on_start, inputs=[model_choice, prompt_box, *settings], outputs=view,
            api_name="reset", api_visibility="undocumented", cancels=[autorun_event, step_event],
            trigger_mode="always_last", **raw,
        )  # fmt: skip
        # A changed prompt starts over unless a link or a run file set it together with its state.
        # It cancels nothing itself: typing and choosing an example stop a run (below), while the
        # change that a link or a run file makes must not cancel a Step clicked right after it.
        prompt_box.change(
            on_edit, inputs=[state, model_choice, prompt_box, *settings], outputs=view, api_visibility="private",
            trigger_mode="always_last", **raw,
        )  # fmt: skip
        prompt_box.input(None, cancels=[autorun_event, step_event])
        # The first load starts from the prompt box, or from the preset in the page's URL.
        demo.load(
            on_load, inputs=[model_choice, prompt_box, *settings],
            outputs=[*view, prompt_box, *sampling_controls, model_choice, model_dropdown], api_visibility="private",
            **raw,
        )  # fmt: skip
        # Choosing a model loads it (the status says so) and starts over from the prompt box.
        # `change` fires once per choice, by mouse or keyboard (in Gradio 6.31 `input` fires twice and
        # `select` misses the keyboard). When the page sets the dropdown itself (back after a failed load,
        # to a link's or a run file's model) it fires too, and finds the session on that model already.
        model_dropdown.change(
            on_model, inputs=[model_dropdown, state, model_choice, prompt_box, *settings],
            outputs=[*view, model_choice, model_dropdown], api_name="model", api_visibility="undocumented",
            cancels=[autorun_event, step_event], preprocess=False, show_progress="minimal",
        )  # fmt: skip
        copy_link.click(
            on_link, inputs=[state, model_choice, prompt_box, *settings], outputs=link_box,
            api_name="link", api_visibility="undocumented", **raw,
        ).then(None, inputs=link_box, outputs=link_box, js=COPY_LINK_JS)  # fmt: skip
        export_button.click(
            on_export, inputs=[state, model_choice, prompt_box, *settings], outputs=export_file,
            api_name="export", api_visibility="undocumented", **raw,
        )  # fmt: skip
        # Preprocessed (unlike the other events) so the path is checked to be an upload.
        import_button.upload(
            on_import, inputs=[import_button, model_choice, prompt_box],
            outputs=[*view, prompt_box, *settings, model_choice], api_name="import", api_visibility="undocumented",
            cancels=[autorun_event, step_event], show_progress="hidden",
        ).then(
            # The dropdown follows the run's model; a separate event keeps /import's outputs as they were.
            lambda name: name, inputs=model_choice, outputs=model_dropdown, api_visibility="private",
            show_progress="hidden",
        )  # fmt: skip
        # Choosing an example changes the prompt box, which starts over (the change event above).
        examples = gr.Examples([[DEFAULT_PROMPT], [NOTEBOOK_PROMPT]], inputs=prompt_box, label="Example prompts")
        examples.dataset.click(None, cancels=[autorun_event, step_event])
        # No queue limit: a class pressing Stop at once is not served one by one.
        stop_button.click(
            on_stop, inputs=[state, *settings], outputs=view, api_visibility="private",
            cancels=[autorun_event], concurrency_limit=None, **raw,
        )  # fmt: skip

        def generate(
            prompt: str,
            max_new_tokens: int = 20,
            sample: bool = False,
            temperature: float = 1.0,
            top_k: int = 0,
            top_p: float = 1.0,
            seed: int = 0,
            model: str = "",
        ) -> Iterator[dict]:
            chosen_lm = lm_for(model)
            yield from generate_updates(chosen_lm, prompt, max_new_tokens, sample, temperature, top_k, top_p, seed)

        def generate_on_the_one_model(
            prompt: str,
            max_new_tokens: int = 20,
            sample: bool = False,
            temperature: float = 1.0,
            top_k: int = 0,
            top_p: float = 1.0,
            seed: int = 0,
        ) -> Iterator[dict]:
            yield from generate(prompt, max_new_tokens, sample, temperature, top_k, top_p, seed)

        # The docstrings are the API page's description. A page without a model list keeps
        # /generate's arguments exactly as they were: there is no model to name.
        generate.__doc__ = GENERATE_DOC + MODEL_ARGUMENT_DOC
        generate_on_the_one_model.__doc__ = GENERATE_DOC
        gr.api(
            generate if offers_choice else generate_on_the_one_model,
            api_name="generate",
            concurrency_limit=limits.stream_workers,
        )
    demo.queue(default_concurrency_limit=limits.workers, max_size=limits.max_queue)
    return demo
