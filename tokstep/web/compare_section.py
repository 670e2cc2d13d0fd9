"""The page's "Two models side by side" section: the page's prompt written by two models of the
allowlist at once, their tokens aligned (tokstep.core.compare), and where they disagree.

A collapsed accordion under the page's own sections: two model dropdowns (the page's model and
another one of the allowlist by default), Step both, Auto-run both (a few tokens) and Reset, a status
line and the table (tokstep.web.compare_view). Each model's half of the comparison (its own
`TokenStepper`, in a `Side`) is a gr.State of its own; the models are the page's, as its runtime
serves them (`PageContext.lm_for`, tokstep.web.model_choice), so their passes batch with every other
session's. Both step greedily: the comparison shows each model's own favourite tokens.

Handlers as in tokstep.web.page_handlers: `on_x(section, context, values)`, bound to the section's
components and the page's context, get the event's inputs as a dict keyed by component and return
an update keyed by component. A Step both on another model or prompt than the comparison's starts it
over first. Auto-run both is a run of the tab's (its fair share, tokstep.web.client_limits), and a
closed tab stops it (tokstep.web.tab_runs).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import gradio as gr
import torch
from gradio.components import Component
from gradio.events import Dependency

from tokstep.core.compare import Side, start_pair, step_pair
from tokstep.core.run_comparison import ComparisonError, check_comparison, restore_comparison
from tokstep.core.run_files import RunFileError, read_run_file
from tokstep.core.stepper import PromptError, RunStopped
from tokstep.web.api import new_stepper
from tokstep.web.bind import bind
from tokstep.web.checks import user_error
from tokstep.web.compare_view import EMPTY, TABLE_CSS, status_text, table_html
from tokstep.web.page_context import PageContext
from tokstep.web.page_layout import PageUI

Update = dict[Component, Any]

AUTORUN_STEPS = 8  # Auto-run both: a few steps, each a token of each model (or of the one behind)
MAX_TOKENS = 64  # tokens each model writes at most in a comparison: the table stays readable
PAUSE_S = 0.3  # between Auto-run's steps: time to see each row come
PRIVATE = {"api_visibility": "private"}
LEFT_OUT = "The run file's comparison of two models was left out:"
DONE = f"Both models are done (an end of text, a full context, or {MAX_TOKENS} tokens each): Reset to start over."


@dataclass(frozen=True)
class CompareUI:
    """The section's components, and the page's prompt box it reads."""

    prompt: gr.Textbox  # the page's
    model_a: gr.Dropdown
    model_b: gr.Dropdown
    side_a: gr.State  # each model's Side (its TokenStepper and its cross probabilities)
    side_b: gr.State
    step: gr.Button
    autorun: gr.Button
    reset: gr.Button
    status: gr.Markdown
    table: gr.HTML
    load: gr.UploadButton  # the page's Load a run: a run file may hold a comparison

    @property
    def outputs(self) -> list[Component]:
        return [self.side_a, self.side_b, self.table, self.status]


def default_pair(allowed: Sequence[str], default: str, unavailable: dict[str, str]) -> tuple[str, str]:
    """The page's model, and the first other model on the allowlist that can load here (the page's
    model again when there is none)."""
    others = [name for name in allowed if name != default and name not in unavailable]
    return default, (others[0] if others else default)


def compare_section(ui: PageUI, context: PageContext, autorun_workers: int) -> CompareUI:
    """Lay the section out (closed) inside the current gr.Blocks and wire its events."""
    models = context.models
    first, second = default_pair(models.allowed, context.default_model, models.unavailable)
    with gr.Accordion("Two models side by side", open=False, elem_id="compare"):
        gr.Markdown(
            "The page's prompt, written by two models at once, greedily (each takes its most likely "
            "token). The table lines their tokens up and marks where they disagree, with each model's "
            f"probability of the other's choice. **Auto-run both** takes {AUTORUN_STEPS} steps."
        )
        with gr.Row(equal_height=True):
            choices = [(name, name) for name in models.allowed]
            model_a = gr.Dropdown(choices, value=first, label="Model A", elem_id="compare-model-a", min_width=160)
            model_b = gr.Dropdown(choices, value=second, label="Model B", elem_id="compare-model-b", min_width=160)
        with gr.Row(elem_id="compare-buttons"):
            step = gr.Button("Step both", variant="primary", elem_id="compare-step", min_width=0)
            autorun = gr.Button("Auto-run both", elem_id="compare-autorun", min_width=0)
            reset = gr.Button("Reset", elem_id="compare-reset", min_width=0)
        status = gr.Markdown(elem_id="compare-status")
        table = gr.HTML(EMPTY, elem_id="compare-table", css_template=TABLE_CSS, js_on_load=None)
    section = CompareUI(
        ui.controls.prompt, model_a, model_b, gr.State(None), gr.State(None), step, autorun, reset, status, table,
        ui.share.load,
    )  # fmt: skip
    wire_compare(section, context, autorun_workers)
    return section


def wire_compare(section: CompareUI, context: PageContext, autorun_workers: int) -> None:
    inputs = {section.prompt, section.model_a, section.model_b, section.side_a, section.side_b}
    raw = {"preprocess": False, "api_visibility": "undocumented", "show_progress": "hidden"}
    parts = (section, context)
    autorun = section.autorun.click(
        bind(on_compare_autorun, *parts), inputs=inputs, outputs=section.outputs, api_name="compare_autorun",
        concurrency_limit=autorun_workers, **raw,
    )  # fmt: skip
    step = section.step.click(
        bind(on_compare_step, *parts), inputs=inputs, outputs=section.outputs, api_name="compare_step", **raw
    )
    section.reset.click(
        bind(on_compare_reset, *parts), inputs=inputs, outputs=section.outputs, api_name="compare_reset",
        cancels=[autorun, step], trigger_mode="always_last", **raw,
    )  # fmt: skip
    gr.on(
        [section.model_a.change, section.model_b.change], bind(on_compare_models, *parts), inputs=inputs,
        outputs=section.outputs, cancels=[autorun, step], trigger_mode="always_last", **{**raw, **PRIVATE},
    )  # fmt: skip


def chosen_names(section: CompareUI, context: PageContext, values: dict[Component, Any]) -> tuple[str, str]:
    """The two dropdowns' models, each checked against the allowlist (a gr.Error names the offered ones)."""
    names = []
    for dropdown in (section.model_a, section.model_b):
        name = values[dropdown]
        if not context.models.is_allowed(name):  # only an API client can send this
            raise user_error(context.models.refusal(name), title="Model not offered")
        names.append(name.strip())
    return names[0], names[1]


def shown(section: CompareUI, a: Side | None, b: Side | None, note: str = "") -> Update:
    """The section's update for the comparison of `a` and `b` (None: none yet)."""
    return {
        section.side_a: a,
        section.side_b: b,
        section.table: table_html(a, b),
        section.status: status_text(a, b, note),
    }


def release(values: dict[Component, Any], section: CompareUI) -> None:
    """Stop the comparison's runs and give its KV caches back: it is being replaced."""
    for side in (values.get(section.side_a), values.get(section.side_b)):
        if isinstance(side, Side):
            side.stepper.stop_runs()
            side.stepper.release(blocking=False)


def start(section: CompareUI, context: PageContext, values: dict[Component, Any]) -> tuple[Side, Side]:
    """A new comparison of the dropdowns' models on the page's prompt (gr.Error for a prompt one of
    them cannot take)."""
    names = chosen_names(section, context, values)
    lms = [context.lm_for(name) for name in names]
    release(values, section)
    try:
        steppers = [new_stepper(lm, values[section.prompt]) for lm in lms]
    except PromptError as error:
        raise user_error(str(error), title="Cannot compare") from None
    return start_pair(steppers[0], steppers[1], names)


def current(section: CompareUI, context: PageContext, values: dict[Component, Any]) -> tuple[Side, Side, str]:
    """The tab's comparison, or a new one when there is none yet or its models or prompt changed;
    with a note saying it started over."""
    a, b = values[section.side_a], values[section.side_b]
    names = chosen_names(section, context, values)
    same = isinstance(a, Side) and isinstance(b, Side) and (a.name, b.name) == names
    if same and a.stepper.prompt_text == values[section.prompt]:
        return a, b, ""
    a, b = start(section, context, values)
    return a, b, "Started both models on the page's prompt."


def on_compare_reset(section: CompareUI, context: PageContext, values: dict[Component, Any]) -> Iterator[Update]:
    """Reset, or another model chosen: both models start over from the page's prompt (a model nobody
    has loaded yet loads first, and the status says so meanwhile)."""
    names = chosen_names(section, context, values)
    loading = [name for name in dict.fromkeys(names) if not context.models.is_loaded(name)]
    if loading:
        yield {section.status: f"⏳ Loading {' and '.join(f'**{name}**' for name in loading)}…"}
    try:
        a, b = start(section, context, values)
    except gr.Error as error:  # a prompt a model cannot take, or a model that failed to load
        yield {**shown(section, None, None), section.status: f"⚠️ {error.message}"}
        return
    yield shown(section, a, b, "Both models start from the page's prompt.")


def on_compare_models(section: CompareUI, context: PageContext, values: dict[Component, Any]) -> Iterator[Update]:
    """Another model chosen: both models start over from the page's prompt, as with Reset, unless the
    comparison is of these models already (a loaded run's comparison set the dropdowns)."""
    a, b = values[section.side_a], values[section.side_b]
    if isinstance(a, Side) and isinstance(b, Side) and (a.name, b.name) == chosen_names(section, context, values):
        yield gr.skip()
        return
    yield from on_compare_reset(section, context, values)


def wire_compare_import(section: CompareUI, context: PageContext, imported: Dependency) -> None:
    """Once Load a run has loaded a run (`imported`, its event; a file it refuses changes nothing),
    put the file's comparison back."""
    imported.success(
        bind(on_compare_import, section, context), inputs={section.load, section.side_a, section.side_b},
        outputs=[*section.outputs, section.model_a, section.model_b], show_progress="hidden", **PRIVATE,
    )  # fmt: skip


def on_compare_import(section: CompareUI, context: PageContext, values: dict[Component, Any]) -> Update:
    """Load a run, after the run itself loaded: put the file's comparison back (tokstep.core.run_comparison),
    its models stepped again. A file without one changes nothing here; a comparison that cannot be
    restored is left out with a warning that says why (the run stays loaded)."""
    path = values[section.load]
    try:
        checked = check_comparison(read_run_file(path)) if isinstance(path, str) else None
    except RunFileError:  # the file was read a moment ago, by the run's own load: changed since
        return gr.skip()
    except ComparisonError as error:
        gr.Warning(f"{LEFT_OUT} {error}")
        return gr.skip()
    if checked is None:
        return gr.skip()
    for side in checked:
        if not context.models.is_allowed(side.name):
            gr.Warning(f"{LEFT_OUT} {context.models.refusal(side.name)}")
            return gr.skip()
    try:
        a, b, warnings = restore_comparison(checked, context.lm_for)
    except ComparisonError as error:
        gr.Warning(f"{LEFT_OUT} {error}")
        return gr.skip()
    except gr.Error as error:  # a model that fails to load
        gr.Warning(f"{LEFT_OUT} {error.message}")
        return gr.skip()
    release(values, section)
    for warning in warnings:
        gr.Warning(warning)
    note = "Loaded the run file's comparison." + "".join(f" ⚠️ {warning}" for warning in warnings)
    return {**shown(section, a, b, note), section.model_a: a.name, section.model_b: b.name}


def on_compare_step(
    section: CompareUI, context: PageContext, values: dict[Component, Any], request: gr.Request
) -> Update:
    """Step both: a token of each model (with different tokenizers, of the one whose text is shorter)."""
    a, b, note = current(section, context, values)
    for side in (a, b):
        context.tab_runs.note(request, side.stepper)
    try:
        wrote = step_pair(a, b, limit=MAX_TOKENS)
    except RunStopped:  # a Reset came while it waited for a pass: that event shows the section
        return gr.skip()
    if not wrote:
        note = DONE
    return shown(section, a, b, note)


def on_compare_autorun(
    section: CompareUI, context: PageContext, values: dict[Component, Any], request: gr.Request
) -> Iterator[Update]:
    """Auto-run both: AUTORUN_STEPS steps, one update each, within the tab's fair share."""
    a, b, note = current(section, context, values)
    with context.clients.page_run(request, 2 * AUTORUN_STEPS) as share:
        for side in (a, b):
            context.tab_runs.note(request, side.stepper)
            side.stepper.client = share.client  # the batcher takes clients in turn
        yield from run_pair(section, a, b, note, share.wrote)


@torch.inference_mode()  # a generator resumed on other threads: grad mode is per thread
def run_pair(section: CompareUI, a: Side, b: Side, note: str, wrote: Callable[[int], None]) -> Iterator[Update]:
    """Up to AUTORUN_STEPS steps of the pair, a pause apart, each shown; a Reset stops it (the steppers'
    runs: RunStopped), and so does a closed tab."""
    runs = (a.stepper.start_run(), b.stepper.start_run())
    last = None
    try:
        for _ in range(AUTORUN_STEPS):
            if last is not None:
                time.sleep(max(0.0, last + PAUSE_S - time.monotonic()))
            last = time.monotonic()
            before = len(a.steps) + len(b.steps)
            if not step_pair(a, b, limit=MAX_TOKENS, runs=runs):
                yield shown(section, a, b, DONE)
                return
            wrote(len(a.steps) + len(b.steps) - before)
            for side in (a, b):
                if not side.done(MAX_TOKENS):
                    side.stepper.prefetch()  # the next pass joins a batch while this row is on its way
            yield shown(section, a, b, note)
            note = ""
    except RunStopped:
        return
    finally:
        for side in (a, b):
            side.stepper.end_run()
