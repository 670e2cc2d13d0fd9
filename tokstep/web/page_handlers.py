"""The page's events that step and show the sequence: Reset, Step, Auto-run, Undo, Stop, a pick from
the top-k, a changed setting or prompt, and choosing another model.

Each event handler is a plain function `on_x(ui, context, values)`: the page's components
(tokstep.web.page_layout.PageUI) and what it serves (tokstep.web.page_context.PageContext), bound
by create_demo, then the event's inputs as Gradio hands over a set of them (a dict keyed by
component). It returns an update keyed by component; outputs it leaves out keep their value, and
`gr.skip()` changes none. The helpers before the handlers take engine objects, not components.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import gradio as gr
import torch
from gradio.components import Component

from tokstep.core.model import LanguageModel, ModelLoadError
from tokstep.core.run_loop import run_steps
from tokstep.core.stepper import STOP_REASON_TEXT, PromptError, RunStopped, TokenStepper, context_full_message
from tokstep.core.tokens import visible_whitespace
from tokstep.web.api import new_stepper
from tokstep.web.checks import user_error, warn
from tokstep.web.pacing import Paced
from tokstep.web.page_context import PageContext
from tokstep.web.page_layout import PageUI
from tokstep.web.settings import AutoRun, PageSettings
from tokstep.web.views import PageView, inline_code, legend_html, render, step_note, token_id_of_label_key

Update = dict[Component, Any]  # an event's update: new values by component


def current(lm: LanguageModel, stepper: TokenStepper | None, prompt: Any) -> TokenStepper:
    """The user's stepper, or a new one from the prompt box (e.g. after the state expired)."""
    if stepper is not None:
        return stepper
    try:
        return new_stepper(lm, prompt)
    except PromptError as error:
        raise user_error(str(error), title="Cannot step") from None


def start(lm: LanguageModel, prompt: Any, settings: PageSettings) -> PageView:
    """A fresh state for `prompt`; a prompt the model cannot take shows why in the status."""
    try:
        return render(new_stepper(lm, prompt), settings)
    except PromptError as error:
        return render(None, settings, f"⚠️ {error}")


def context_full(stepper: TokenStepper, settings: PageSettings) -> PageView | None:
    """The view that says the context is full (with a pop-up), or None while there is room."""
    if stepper.room_left is None or stepper.room_left > 0:
        return None
    gr.Warning(context_full_message(stepper.lm))
    return render(stepper, settings, f"**Stopped:** {STOP_REASON_TEXT['context_full']}.")


def append(stepper: TokenStepper, settings: PageSettings, token_id: int | None = None) -> PageView:
    """Append one token (the user's, a seeded draw, or the most likely) and render."""
    if (full := context_full(stepper, settings)) is not None:
        return full
    step = stepper.step(settings.top_k, token_id=token_id, sampling=settings.sampling)
    return render(stepper, settings, step_note(step))


# A generator resumed on other threads (see tokstep.core.run_loop): its renders run passes too.
@torch.inference_mode()
def autorun(stepper: TokenStepper, settings: PageSettings, tokens: int, pause_s: float) -> Iterator[PageView]:
    """Append up to `tokens` tokens, one view each, a pause apart (the shared run loop, paced).
    A Stop, an Undo or a pick ends it quietly: the page then shows the sequence as it is."""
    if (full := context_full(stepper, settings)) is not None:
        yield full
        return
    paced = Paced(stepper.step, pause_s)
    for step in run_steps(stepper, tokens, settings.top_k, settings.sampling, step=paced):
        yield render(stepper, settings, step_note(step))


def undo(stepper: TokenStepper, settings: PageSettings) -> PageView:
    """Take back the last generated token: the page is as it was before it."""
    stepper.stop_runs()  # Undo cancels Auto-run: a step of it may not land after the undo
    if not stepper.can_undo:
        gr.Warning("Nothing to undo: only the prompt is left.")
        return render(stepper, settings, "Nothing to undo: only the prompt is left.")
    step = stepper.undo()
    return render(stepper, settings, f"Took back {inline_code(visible_whitespace(step.token))} (id {step.token_id}).")


def tab_stepper(ui: PageUI, context: PageContext, values: dict[Component, Any]) -> TokenStepper:
    """The tab's stepper on its model, or a new one from the prompt box."""
    session = ui.session
    lm = context.lm_for(values[session.model_choice])
    return current(lm, values[session.state], values[ui.controls.prompt])


def on_start(ui: PageUI, context: PageContext, values: dict[Component, Any]) -> Update:
    """Reset: start over from the prompt box."""
    lm = context.lm_for(values[ui.session.model_choice])
    return ui.show(start(lm, values[ui.controls.prompt], PageSettings.from_inputs(values)))


def at_end_of_text(stepper: TokenStepper) -> bool:
    """Whether the sequence ends with one of the model's end-of-text tokens."""
    return bool(stepper.ids) and stepper.ids[-1] in stepper.lm.eos_token_ids


def end_of_text_note(stepper: TokenStepper) -> str:
    last = stepper.ids[-1]
    return (
        f"**End of text:** the model wrote its end-of-text token {inline_code(stepper.lm.texts.text(last))} "
        f"(id {last}), so Step stops here. Press **Continue past the end** to see what it writes after it, "
        "or Undo to take it back."
    )


def on_step(ui: PageUI, context: PageContext, values: dict[Component, Any], request: gr.Request) -> Update:
    """Step; at the end of the text it stops and says so (a moment to look, not to write on)."""
    settings = PageSettings.from_inputs(values)
    stepper = context.tab_runs.note(request, tab_stepper(ui, context, values))
    if at_end_of_text(stepper):
        return ui.show(render(stepper, settings, end_of_text_note(stepper)))
    return shown_unless_stopped(ui, stepper, settings)


def on_continue(ui: PageUI, context: PageContext, values: dict[Component, Any], request: gr.Request) -> Update:
    """Continue past the end: one Step whatever the last token is."""
    settings = PageSettings.from_inputs(values)
    return shown_unless_stopped(ui, context.tab_runs.note(request, tab_stepper(ui, context, values)), settings)


def shown_unless_stopped(
    ui: PageUI, stepper: TokenStepper, settings: PageSettings, token_id: int | None = None
) -> Update:
    """One step, shown; none when a Stop, an Undo or a pick cancelled it while it waited for its
    pass (a serving engine's request): that event shows the sequence."""
    try:
        return ui.show(append(stepper, settings, token_id))
    except RunStopped:
        return gr.skip()


def on_tab_closed(context: PageContext, request: gr.Request) -> None:
    """A closed tab: its runs stop now, and a request of theirs in flight is cancelled."""
    context.tab_runs.stop(request)


def run_buttons(ui: PageUI, left: int | None) -> Update:
    """While Auto-run runs, its button says so and how many tokens are left, and Step waits (Stop,
    Undo or a pick end the run); `left` None: back to idle."""
    controls = ui.controls
    if left is None:
        return {
            controls.autorun: gr.Button(value="Auto-run", interactive=True),
            controls.step: gr.Button(interactive=True),
        }
    running = f"Running… {left} left"
    return {controls.autorun: gr.Button(value=running, interactive=False), controls.step: gr.Button(interactive=False)}


def on_autorun(ui: PageUI, context: PageContext, values: dict[Component, Any], request: gr.Request) -> Iterator[Update]:
    run = AutoRun.from_inputs(values)
    settings = PageSettings.from_inputs(values)
    # Within the tab's fair share (tokstep.web.client_limits), or refused before anything runs.
    with context.clients.page_run(request, run.tokens) as share:
        stepper = context.tab_runs.note(request, tab_stepper(ui, context, values))
        stepper.client = share.client  # the batcher takes clients in turn (tokstep.runtimes.scheduler)
        idle = False
        for written, shown in enumerate(autorun(stepper, settings, run.tokens, run.pause_s), 1):
            share.wrote()
            # The run's last step says why it stopped: the buttons come back with it, in the same update.
            steps = shown.state.steps if shown.state is not None else []
            idle = written >= run.tokens or (bool(steps) and steps[-1].stop_reason is not None)
            yield {**ui.show(shown), **run_buttons(ui, None if idle else run.tokens - written)}
        if not idle:  # it ended otherwise (the context was full, or Undo or a pick stopped it)
            yield run_buttons(ui, None)


def idle_after(handler: Callable[..., Any]) -> Callable[..., Any]:
    """`handler` for an event that ends a running Auto-run: its update also puts Auto-run's and
    Step's buttons back (the cancelled run cannot). Same signature, so `bind` and Gradio read it."""
    if inspect.isgeneratorfunction(handler):

        @functools.wraps(handler)
        def streaming(ui: PageUI, *args: Any, **kwargs: Any) -> Iterator[Any]:
            for update in handler(ui, *args, **kwargs):
                yield update if update.get("__type__") else {**update, **run_buttons(ui, None)}

        return streaming

    @functools.wraps(handler)
    def returning(ui: PageUI, *args: Any, **kwargs: Any) -> Any:
        update = handler(ui, *args, **kwargs)
        return update if update.get("__type__") else {**update, **run_buttons(ui, None)}

    return returning


def on_undo(ui: PageUI, context: PageContext, values: dict[Component, Any]) -> Update:
    stepper = tab_stepper(ui, context, values)
    return ui.show(undo(stepper, PageSettings.from_inputs(values)))


def on_stop(ui: PageUI, context: PageContext, values: dict[Component, Any]) -> Update:
    """Stop. Cancelling Auto-run does not stop the thread running its current step: that step may
    still append a token after the page's last update. Wait for it, and show the sequence as it is."""
    stepper = values[ui.session.state]
    if stepper is None:
        return gr.skip()
    stepper.stop_runs()
    return ui.show(render(stepper, PageSettings.from_inputs(values), "**Stopped.**"))


def on_edit(ui: PageUI, context: PageContext, values: dict[Component, Any]) -> Update:
    """A changed prompt starts over, unless a link or a run file set it together with its state."""
    stepper, text = values[ui.session.state], values[ui.controls.prompt]
    if stepper is not None and stepper.prompt_text == text:
        return gr.skip()
    return on_start(ui, context, values)


def on_view(ui: PageUI, context: PageContext, values: dict[Component, Any]) -> Update:
    """A changed setting: the same state, shown with it."""
    stepper = values[ui.session.state]
    if stepper is None:
        return on_start(ui, context, values)
    return ui.show(render(stepper, PageSettings.from_inputs(values)))


def on_pick(ui: PageUI, context: PageContext, values: dict[Component, Any], event: gr.SelectData) -> Update:
    """A click on a top-k candidate appends it. (Gradio passes `event` by its annotation.)"""
    token_id = token_id_of_label_key(str(event.value))
    settings = PageSettings.from_inputs(values)
    stepper = tab_stepper(ui, context, values)
    stepper.stop_runs()  # a pick cancels Auto-run: none of its steps may land after the pick
    if token_id is None:
        return ui.show(render(stepper, settings))
    return shown_unless_stopped(ui, stepper, settings, token_id)


def on_model(ui: PageUI, context: PageContext, values: dict[Component, Any]) -> Iterator[Update]:
    """Move the tab to the model chosen in the dropdown: first a "Loading" status (when nobody has
    loaded it yet), then the result.

    On success the tab starts over from the prompt box on the new model. On failure a warning says
    why, the dropdown goes back, and the tokens stay as they were.
    """
    controls, models = ui.controls, context.models
    choice, name = values[controls.model], values[ui.session.model_choice]
    stepper, text = values[ui.session.state], values[controls.prompt]
    settings = PageSettings.from_inputs(values)
    if not models.is_allowed(choice):  # only an API client can send this: the dropdown offers the list
        raise user_error(models.refusal(choice), title="Model not offered")
    choice = choice.strip()
    if choice == name:
        yield gr.skip()
        return
    if not models.is_loaded(choice):
        loading = f"⏳ Loading **{choice}**… (the first time takes a while; the page stays on **{name}** until then)"
        yield {ui.view.status: loading, controls.model: gr.Dropdown(interactive=False)}
    try:
        lm = models.get(choice)
    except ModelLoadError as error:
        message = f"Could not switch to '{choice}': {error} The page stays on '{name}'."
        warn(message, title="Model not loaded")
        note = f"⚠️ {message}"
        shown = ui.show(render(stepper, settings, note)) if stepper is not None else {ui.view.status: note}
        yield {**shown, controls.model: gr.Dropdown(value=name, interactive=True)}
        return
    try:
        shown = render(new_stepper(lm, text), settings, f"Switched to **{choice}**: started over from the prompt.")
    except PromptError as error:
        shown = render(None, settings, f"Switched to **{choice}**. ⚠️ {error}")
    yield {
        **ui.show(shown),
        ui.session.model_choice: choice,
        ui.view.legend: legend_html(lm),
        controls.model: gr.Dropdown(value=choice, interactive=True),
    }
