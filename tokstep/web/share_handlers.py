"""The page's events for teachers: opening the page from a link (`?prompt=...&steps=N`, see
tokstep.core.presets), Copy link, Export run and Load a run (tokstep.core.run_files).

Handlers as in tokstep.web.page_handlers: `on_x(ui, context, values)` returns an update keyed by
component. Load a run is the exception in what it takes: Gradio preprocesses the upload (that is
what makes sure the path is a file the visitor uploaded), and its inputs keep their order (the
file, the model, the prompt) for API clients.
"""

from __future__ import annotations

import functools
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import gradio as gr
from gradio.components import Component

from tokstep.core.compare import Side
from tokstep.core.forward import ModelNotHere
from tokstep.core.model import LanguageModel, ModelLoadError
from tokstep.core.presets import Preset, apply_preset, has_preset, link_reproduces, parse_preset, preset_query
from tokstep.core.run_files import (
    MAX_RUN_BYTES,
    RestoredRun,
    RunFileError,
    dumps_run,
    export_run,
    read_run_file,
    restore_run,
    run_model_name,
    steps_with_views,
)
from tokstep.core.sampling import SamplingSettings
from tokstep.web.browser_run import read_stored_run
from tokstep.web.checks import user_error
from tokstep.web.constants import (
    DEFAULT_PROMPT,
    EXPORT_TTL_S,
    GREEDY,
    MAX_TOP_K,
    SAMPLE,
    SAMPLE_TOP_K_MAX,
    TEMPERATURE_RANGE,
    TOP_P_MIN,
)
from tokstep.web.page_context import PageContext
from tokstep.web.page_handlers import Update, start, tab_stepper
from tokstep.web.page_layout import PageUI
from tokstep.web.settings import PageSettings
from tokstep.web.views import PageView, legend_html, render

LINK_WARNING = (
    "This link gives the prompt and the number of tokens, stepped with the current settings: "
    "tokens you picked by hand or stepped with other settings may come out differently. "
    "Export the run to keep them exactly."
)


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


def sampling_values(ui: PageUI, sampling: SamplingSettings | None) -> Update:
    """The mode, temperature, sample top-k, top-p and seed controls set to `sampling` (greedy: only
    the mode changes)."""
    controls = ui.settings
    if sampling is None:
        return {controls.mode: GREEDY}
    return {
        controls.mode: SAMPLE,
        controls.temperature: sampling.temperature,
        controls.sample_top_k: sampling.top_k,
        controls.top_p: sampling.top_p,
        controls.seed: sampling.seed,
    }


def open_preset(
    lm: LanguageModel, preset: Preset, prompt: Any, settings: PageSettings
) -> tuple[PageView, str | None, SamplingSettings | None]:
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


def on_load(ui: PageUI, context: PageContext, values: dict[Component, Any], request: gr.Request) -> Iterator[Update]:
    """The page's first load: start from the preset in the page's URL (on the link's model, loading it
    first when nobody has), or from the run the tab's browser kept (a reload), or from the prompt box.
    Gradio passes `request` by its annotation."""
    settings = PageSettings.from_inputs(values)
    name, text = values[ui.session.model_choice], values[ui.controls.prompt]
    params = dict(request.query_params) if request is not None else {}
    if not has_preset(params):
        # A reload: the run the tab's browser kept, when it restores exactly here (a link's state wins).
        stored = read_stored_run(context, values[ui.session.stored])
        if stored is not None and sampling_fits_page(stored.sampling) is None:
            yield from_the_browser(ui, stored, name, text)
            return
        yield ui.show(start(context.lm_for(name), text, settings))
        return
    preset = parse_preset(params)
    models = context.models
    chosen_model, problem = name, None
    if preset.model is not None and preset.model != name:
        if not models.is_allowed(preset.model):
            problem = f"{models.refusal(preset.model).rstrip('.')}; running {name}"
        else:
            if not models.is_loaded(preset.model):
                yield {ui.view.status: f"⏳ Loading **{preset.model}** for this link…"}
            try:
                models.get(preset.model)
                chosen_model = preset.model
            except ModelLoadError as error:
                why = str(error).rstrip(".")
                problem = f"the model '{preset.model}' could not be loaded ({why}); running {name}"
    if problem is not None:
        preset = replace(preset, problems=(*preset.problems, problem))
    shown, prompt_text, sampling = open_preset(context.lm_for(chosen_model), preset, text, settings)
    update = ui.show(shown)
    if prompt_text is not None and prompt_text != text:
        update[ui.controls.prompt] = prompt_text
    if sampling is not None:
        update.update(sampling_values(ui, sampling))
    if chosen_model != name:
        update.update({ui.session.model_choice: chosen_model, ui.controls.model: chosen_model})
        update[ui.view.legend] = legend_html(context.lm_for(chosen_model))  # the link's model's ids
    yield update


def from_the_browser(ui: PageUI, stored: RestoredRun, name: str, text: Any) -> Update:
    """The page as the tab's browser kept it (tokstep.web.browser_run): its run, settings and model."""
    lm = stored.stepper.lm
    note = f"Restored this tab's run from your browser: {len(stored.stepper.steps)} generated tokens."
    update = show_restored(ui, stored, stored.sampling, text, note)
    if lm.name != name:
        update.update({ui.controls.model: lm.name, ui.view.legend: legend_html(lm)})
    return update


def show_restored(ui: PageUI, restored: RestoredRun, sampling: SamplingSettings | None, text: Any, note: str) -> Update:
    """The update for a restored run (a run file's or the browser's): its tokens, its prompt in the
    box, its settings (with `sampling`, which the page can show) and its model for the tab."""
    settings = PageSettings(restored.top_k, sampling, restored.score_prompt)
    update = ui.show(render(restored.stepper, settings, note))
    if restored.stepper.prompt_text != text:
        update[ui.controls.prompt] = restored.stepper.prompt_text
    controls = ui.settings
    update.update({controls.top_k_size: restored.top_k, controls.score_prompt: restored.score_prompt})
    update.update(sampling_values(ui, sampling))
    update[ui.session.model_choice] = restored.stepper.lm.name
    return update


def on_link(ui: PageUI, context: PageContext, values: dict[Component, Any]) -> Update:
    """Copy link: the query of a link to the tab's prompt, its number of tokens and its settings."""
    settings = PageSettings.from_inputs(values)
    stepper = tab_stepper(ui, context, values)
    if not link_reproduces(stepper, settings.sampling):
        gr.Warning(LINK_WARNING)
    # The model goes into the link only when it is not the default, so plain links stay short.
    model = stepper.lm.name if stepper.lm.name != context.default_model else None
    return {ui.share.link: preset_query(stepper, settings.sampling, model)}


def on_export(
    ui: PageUI, context: PageContext, sides: Sequence[Component], values: dict[Component, Any], views: bool = False
) -> Update:
    """Export run: the run file, with the tab's comparison of two models when it has one (`sides`: the
    comparison section's two states); with `views` (the "with layers and attention" button), each
    step's "Why this token?" views too (where the model is not in this process, without them and a
    warning that says why)."""
    settings = PageSettings.from_inputs(values)
    pair = tuple(values.get(side) for side in sides)
    comparison = pair if len(pair) == 2 and all(isinstance(side, Side) for side in pair) else None
    exported = functools.partial(
        export_run, tab_stepper(ui, context, values), settings.top_k, settings.sampling, settings.score_prompt,
        comparison=comparison,
    )  # fmt: skip
    try:
        run = exported(layers=views, attention=views)
    except ModelNotHere as error:
        gr.Warning(f"Exported without layer by layer and where it looked: {error}")
        run = exported()
    if views and (kept := steps_with_views(run)) < len(run["steps"]):
        gr.Warning(
            f"Saved layer by layer and where it looked for the last {kept} of {len(run['steps'])} tokens: with all "
            f"of them the file would pass {MAX_RUN_BYTES / 1e6:.0f} MB, the most Load a run reads."
        )
    return {ui.share.export_file: write_export(context.export_folder, run)}


def on_export_with_views(
    ui: PageUI, context: PageContext, sides: Sequence[Component], values: dict[Component, Any]
) -> Update:
    return on_export(ui, context, sides, values, views=True)


def run_model(context: PageContext, run: dict, name: str) -> LanguageModel:
    """The model to restore a run file on: the file's own when the page offers a choice."""
    wanted = run_model_name(run)
    if not context.offers_choice or wanted is None or wanted == name:
        return context.lm_for(name)
    models = context.models
    if not models.is_allowed(wanted):
        raise RunFileError(
            f"This run was made with the model '{wanted[:100]}', which this page does not offer "
            f"({', '.join(models.allowed)})."
        )
    try:
        return models.get(wanted)
    except ModelLoadError as error:
        raise RunFileError(f"This run was made with the model '{wanted}', which could not be loaded: {error}") from None


def on_import(ui: PageUI, context: PageContext, path: Any, name: str, text: Any) -> Update:
    """Load a run: the file sets the tokens, every setting and the model, so the page's own are not read."""
    if not isinstance(path, str):
        raise user_error("No file came with the upload.", title="Cannot load the run")
    try:
        run = read_run_file(path)
        run_lm = run_model(context, run, name)
        restored = restore_run(run_lm, run, MAX_TOP_K)
    except RunFileError as error:
        # gr.Error changes no output: the tokens, settings and model stay as they were.
        raise user_error(f"{error} Nothing on the page was changed.", title="Cannot load the run") from None
    warnings = list(restored.warnings)
    sampling = restored.sampling
    if (why := sampling_fits_page(sampling)) is not None:
        warnings.append(f"The file's sampling settings do not fit the page ({why}); the page steps greedily.")
        sampling = None
    for warning in warnings:
        gr.Warning(warning)
    switched = f" Switched to **{run_lm.name}**, the run's model." if run_lm.name != name else ""
    note = f"Loaded a run: {len(restored.stepper.steps)} generated tokens.{switched}" + "".join(
        f" ⚠️ {warning}" for warning in warnings
    )
    return show_restored(ui, restored, sampling, text, note)


def model_of_the_tab(name: str) -> str:
    """The dropdown's value after Load a run: the tab's model (the run's, when it switched)."""
    return name
