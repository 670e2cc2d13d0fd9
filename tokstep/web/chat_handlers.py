"""The chat section's events: Send, Step, Auto-run, a pick from the top-k, Undo, Clear, Stop, and a
changed setting or model.

As on the main page (tokstep.web.page_handlers), each handler is a plain function
`on_x(ui, lm_for, values)`: the section's components and the page's way to a model by name, bound by
add_chat, then the event's inputs as a dict keyed by component. It returns an update keyed by
component. The session's model is looked up at every event, so a changed model is noticed at the next.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import gradio as gr
import torch
from gradio.components import Component

from tokstep.core.chat import NO_TEMPLATE_MESSAGE, ChatError, ChatSession, has_chat_template
from tokstep.core.model import LanguageModel
from tokstep.core.run_loop import run_steps
from tokstep.core.stepper import RunStopped
from tokstep.core.tokens import visible_whitespace
from tokstep.web.chat_layout import ChatUI
from tokstep.web.chat_view import chat_note, render
from tokstep.web.checks import user_error, warn
from tokstep.web.client_limits import ClientLimits
from tokstep.web.pacing import Paced
from tokstep.web.settings import ChatSettings
from tokstep.web.tab_runs import TabRuns
from tokstep.web.views import inline_code, token_id_of_label_key

Update = dict[Component, Any]  # an event's update: new values by component
ModelFor = Callable[[Any], LanguageModel]  # the page's model for a name (gr.Error when it has none)


def session_for(ui: ChatUI, lm_for: ModelFor, values: dict[Component, Any]) -> ChatSession:
    """The user's session on the model the page's model choice names now (a new one the first time)."""
    name = values[ui.model_choice]
    try:
        lm = lm_for(name)
    except Exception as error:  # whatever lm_for raises, the user gets its message
        raise user_error(f"Cannot use the model {name!r}: {error}", title="Chat") from None
    session = values[ui.state]
    if not isinstance(session, ChatSession):
        return ChatSession(lm)
    if session.use_model(lm):
        gr.Info("The model changed: the conversation's text stays, and the next message templates it anew.")
    return session


def stop_runs(session: ChatSession) -> None:
    """Events that cancel Auto-run wait for its step in progress: none lands after them."""
    if session.turn is not None:
        session.turn.stepper.stop_runs()


def refused(ui: ChatUI, session: ChatSession, settings: ChatSettings, error: ChatError) -> Update:
    gr.Warning(str(error))
    return ui.show(render(session, settings, f"⚠️ {error}"))


def nothing_to_step(session: ChatSession) -> str:
    if not has_chat_template(session.lm.tokenizer):
        return NO_TEMPLATE_MESSAGE
    return "No reply is being written: type a message and press Send first."


def append(ui: ChatUI, session: ChatSession, settings: ChatSettings, token_id: int | None = None) -> Update:
    """One more token of the reply (the user's pick, a seeded draw, or the most likely)."""
    if session.turn is None:
        return refused(ui, session, settings, ChatError(nothing_to_step(session)))
    try:
        step = session.turn.step(settings.top_k, token_id=token_id, sampling=settings.sampling)
    except ChatError as error:
        return refused(ui, session, settings, error)
    except RunStopped:  # cancelled while it waited (a serving engine): the event that stopped it shows the chat
        return gr.skip()
    return ui.show(render(session, settings, chat_note(step, session.turn)))


def on_view(ui: ChatUI, lm_for: ModelFor, values: dict[Component, Any]) -> Update:
    return ui.show(render(session_for(ui, lm_for, values), ChatSettings.from_inputs(values)))


def on_send(ui: ChatUI, lm_for: ModelFor, values: dict[Component, Any]) -> Update:
    settings = ChatSettings.from_inputs(values)
    session = session_for(ui, lm_for, values)
    stop_runs(session)
    if not has_chat_template(session.lm.tokenizer):
        # Not the user's mistake but the model's: one titled pop-up and nothing else (a raised
        # gr.Error would also mark the outputs "Error"). The chat stays; the message box, left out
        # of the update, keeps what was typed.
        warn(NO_TEMPLATE_MESSAGE, title="Cannot send")
        return ui.show(render(session, settings))
    try:
        turn = session.send(values[ui.conversation.message])
    except ChatError as error:
        # gr.Error changes no output: the chat and the message box stay as they were.
        raise user_error(str(error), title="Cannot send") from None
    note = f"Sent. The model reads {turn.stepper.prompt_length} tokens: press Step or Auto-run to write the reply."
    return {**ui.show(render(session, settings, note)), ui.conversation.message: ""}


def on_step(ui: ChatUI, lm_for: ModelFor, values: dict[Component, Any]) -> Update:
    settings = ChatSettings.from_inputs(values)
    return append(ui, session_for(ui, lm_for, values), settings)


def on_pick(ui: ChatUI, lm_for: ModelFor, values: dict[Component, Any], event: gr.SelectData) -> Update:
    """A click on a candidate takes it. (Gradio passes `event` by its annotation.)"""
    settings = ChatSettings.from_inputs(values)
    session = session_for(ui, lm_for, values)
    stop_runs(session)
    token_id = token_id_of_label_key(str(event.value))
    if token_id is None:
        return ui.show(render(session, settings))
    return append(ui, session, settings, token_id)


# A generator resumed on other threads (see tokstep.core.run_loop): its renders run passes too.
@torch.inference_mode()
def on_autorun(
    ui: ChatUI,
    lm_for: ModelFor,
    tab_runs: TabRuns,
    clients: ClientLimits,
    values: dict[Component, Any],
    request: gr.Request,
) -> Iterator[Update]:
    """Write the reply token by token, a pause apart, until the turn is over or Auto-run has written
    its tokens: the page's run loop, stepping the turn (which refuses to write past its end). A
    closed tab stops it (`tab_runs`); it counts as one of the tab's runs (`clients`)."""
    settings = ChatSettings.from_inputs(values)
    run = settings.autorun
    # Within the tab's fair share (tokstep.web.client_limits), or refused before anything runs.
    with clients.page_run(request, run.tokens) as share:
        session = session_for(ui, lm_for, values)
        turn = session.turn
        if turn is None or turn.over:
            yield append(ui, session, settings)  # says why nothing can be written
            return
        tab_runs.note(request, turn.stepper)
        turn.stepper.client = share.client  # the batcher takes clients in turn (tokstep.runtimes.scheduler)
        steps = run_steps(
            turn.stepper, run.tokens, settings.top_k, settings.sampling,
            step=Paced(turn.step, run.pause_s), ends=lambda _: turn.over,
        )  # fmt: skip
        # Stop, Undo, a pick, Send or Clear ends the run quietly: the view shows the turn as it is.
        for step in steps:
            share.wrote()
            note = chat_note(step, turn)
            if step.stop_reason == "max_new_tokens":
                note += f" **Stopped:** Auto-run wrote the {run.tokens} tokens asked for; Auto-run again to go on."
            yield ui.show(render(session, settings, note))


def on_undo(ui: ChatUI, lm_for: ModelFor, values: dict[Component, Any]) -> Update:
    settings = ChatSettings.from_inputs(values)
    session = session_for(ui, lm_for, values)
    stop_runs(session)
    if session.turn is None:
        return refused(ui, session, settings, ChatError("Nothing to undo: no reply is being written."))
    try:
        step = session.turn.undo()
    except ChatError as error:
        return refused(ui, session, settings, error)
    note = f"Took back {inline_code(visible_whitespace(step.token))} (id {step.token_id})."
    return ui.show(render(session, settings, note))


def on_clear(ui: ChatUI, lm_for: ModelFor, values: dict[Component, Any]) -> Update:
    session = session_for(ui, lm_for, values)
    stop_runs(session)
    session.clear()
    return ui.show(render(session, ChatSettings.from_inputs(values), "The chat is cleared."))


def on_stop(ui: ChatUI, lm_for: ModelFor, values: dict[Component, Any]) -> Update:
    """As the page's Stop: the cancelled run's step in progress may still append a token."""
    session = session_for(ui, lm_for, values)
    stop_runs(session)
    return ui.show(render(session, ChatSettings.from_inputs(values), "**Stopped.**"))
