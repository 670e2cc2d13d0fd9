"""Chat mode's section: `add_chat(model_choice, lm_for)` builds it inside the current `gr.Blocks`.

Send adds the user's message to a `gr.Chatbot` and templates the conversation
(tokstep.core.chat); the assistant's reply is then written with Step, Auto-run or a click on a
top-k candidate, exactly as on the main page. "Show the template's tokens" shows every token
the model reads, the template's control tokens marked.

  tokstep.web.chat_layout    the section's parts and `ChatUI`, every component in one object
  tokstep.web.chat_handlers  its events, plain functions bound to the `ChatUI` and `lm_for`
  tokstep.web.chat_view      what the components show for a session

Per-user state is one `ChatSession` in a `gr.State`. Every event takes the session's model
name (`model_choice`) and asks `lm_for` for the model, so a changed model is noticed at the
next event. Events take their inputs as a set and raw (`preprocess=False`), and read the settings
with `ChatSettings.from_inputs` (tokstep.web.settings), like tokstep.web.page; API clients pass
them with `tokstep.web.settings.chat_arguments`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import gradio as gr
from gradio.components import Component

from tokstep.core.chat import has_chat_template
from tokstep.core.model import LanguageModel
from tokstep.web import chat_handlers as chat
from tokstep.web.bind import bind
from tokstep.web.chat_layout import ChatUI, buttons, conversation, reply_view, settings_accordion
from tokstep.web.client_limits import ClientLimits
from tokstep.web.constants import STATE_TTL_S
from tokstep.web.tab_runs import TabRuns

__all__ = ["ModelSwitch", "add_chat"]


@dataclass(frozen=True)
class ModelSwitch:
    """How the chat section can move the page to a chat model: the page's model dropdown (setting
    it switches the page, as a visitor's choice does) and the offered models with a chat template."""

    dropdown: gr.Dropdown | None = None
    chat_models: Sequence[str] = field(default_factory=tuple)


def add_chat(
    model_choice: Component,
    lm_for: Callable[[Any], LanguageModel],
    *,
    autorun_workers: int = 32,
    switch: ModelSwitch = ModelSwitch(),  # noqa: B008 (frozen, so sharing the default is safe)
    tab_runs: TabRuns | None = None,
    clients: ClientLimits | None = None,
) -> None:
    """Build the chat section inside the current `gr.Blocks`.

    `model_choice` holds the session's model name (a dropdown or a gr.State); `lm_for(name)`
    gives that model. `autorun_workers`: Auto-runs at once (they mostly pause between tokens).
    `switch`: when the tab's model has no chat template, the section says so before anyone types
    and offers a button that switches the page to the first chat model on its list. `tab_runs`:
    where the page notes what each tab steps, so a closed tab's Auto-run stops (the page's own).
    `clients`: each client's fair share, so a tab's Auto-runs here count with the page's (the page's own).
    """
    state = gr.State(None, time_to_live=STATE_TTL_S)  # first, as on the main page
    with gr.Column(elem_id="chat"):
        with gr.Row(visible=False, elem_id="chat-no-template-row") as offer_row:
            offer = gr.Markdown(elem_id="chat-no-template")
            switch_button = gr.Button("Switch", variant="primary", visible=False, elem_id="chat-switch")
        ui = ChatUI(state, model_choice, conversation(), buttons(), reply_view(), settings_accordion())
    wire_chat(
        ui, lm_for, autorun_workers, tab_runs if tab_runs is not None else TabRuns(),
        clients if clients is not None else ClientLimits(),
    )  # fmt: skip
    wire_offer(model_choice, lm_for, switch, offer_row, offer, switch_button)


def chat_offer(
    lm: LanguageModel, name: str, chat_models: Sequence[str], row: Component, offer: Component, button: Component
) -> dict[Component, Any]:
    """What the no-template notice shows for the tab's model `name`: nothing when it has a template;
    otherwise the notice, and a button to the first other chat model on the page's list."""
    if has_chat_template(lm.tokenizer):
        return {row: gr.Row(visible=False), offer: "", button: gr.Button(visible=False)}
    others = [other for other in chat_models if other != name]
    text = f"⚠️ **{name}** has no chat template, so it cannot chat."
    text += f" **{others[0]}** on this page's list has one." if others else " No model on this page's list has one."
    target = gr.Button(f"Switch the page to {others[0]}", visible=True) if others else gr.Button(visible=False)
    return {row: gr.Row(visible=True), offer: text, button: target}


def wire_offer(
    model_choice: Component,
    lm_for: Callable[[Any], LanguageModel],
    switch: ModelSwitch,
    row: Component,
    offer: Component,
    button: Component,
) -> None:
    """The notice follows the tab's model (at load and at every change); the button sets the page's
    dropdown, whose own change event loads the model and starts the page over (tokstep.web.page)."""

    def show(name: Any) -> dict[Component, Any]:
        try:
            lm = lm_for(name)
        except gr.Error:  # the page's own events say why; the notice stays as it is
            return {row: gr.skip(), offer: gr.skip(), button: gr.skip()}
        return chat_offer(lm, name, switch.chat_models if switch.dropdown is not None else (), row, offer, button)

    outputs = [row, offer, button]
    hidden = {"show_progress": "hidden", "api_visibility": "private"}
    if hasattr(model_choice, "change"):
        model_choice.change(show, inputs=model_choice, outputs=outputs, **hidden)
    root = gr.context.Context.root_block
    if root is not None:
        root.load(show, inputs=model_choice, outputs=outputs, **hidden)
    if switch.dropdown is not None:

        def switch_model(name: Any) -> Any:
            others = [other for other in switch.chat_models if other != name]
            return gr.Dropdown(value=others[0]) if others else gr.skip()

        button.click(switch_model, inputs=model_choice, outputs=switch.dropdown, **hidden)


def wire_chat(
    ui: ChatUI, lm_for: Callable[[Any], LanguageModel], autorun_workers: int, tab_runs: TabRuns, clients: ClientLimits
) -> None:
    """Every event of the chat section, each to its handler; the named ones are callable by API
    clients (undocumented), as tokstep.web.page's events."""
    parts = (ui, lm_for)  # what every handler is bound to
    inputs = {ui.state, ui.model_choice, *ui.controls}
    view, message, press = ui.view_outputs, ui.conversation.message, ui.buttons
    raw = {"preprocess": False, "show_progress": "hidden"}
    api = {**raw, "api_visibility": "undocumented"}
    private = {**raw, "api_visibility": "private"}

    autorun_event = press.autorun.click(
        bind(chat.on_autorun, *parts, tab_runs, clients), inputs=inputs, outputs=view, api_name="chat_autorun",
        concurrency_limit=autorun_workers, **api,
    )  # fmt: skip
    step_event = press.step.click(bind(chat.on_step, *parts), inputs=inputs, outputs=view, api_name="chat_step", **api)
    runs = [autorun_event, step_event]
    send = {"inputs": {*inputs, message}, "outputs": [*view, message], "cancels": runs}
    ui.conversation.send.click(bind(chat.on_send, *parts), api_name="chat_send", **send, **api)
    message.submit(bind(chat.on_send, *parts), **send, **private)
    press.undo.click(bind(chat.on_undo, *parts), inputs=inputs, outputs=view, api_name="chat_undo", cancels=runs, **api)
    press.clear.click(
        bind(chat.on_clear, *parts), inputs=inputs, outputs=view, api_name="chat_clear", cancels=runs, **api
    )
    # The Chatbot's own trash button empties it in the browser: the session starts over too.
    ui.conversation.chatbot.clear(bind(chat.on_clear, *parts), inputs=inputs, outputs=view, cancels=runs, **private)
    ui.reply.topk.select(bind(chat.on_pick, *parts), inputs=inputs, outputs=view, cancels=[autorun_event], **private)
    press.stop.click(
        bind(chat.on_stop, *parts), inputs=inputs, outputs=view, cancels=[autorun_event], concurrency_limit=None,
        **private,
    )  # fmt: skip
    # A changed setting or model redraws the view; so does the page's first load.
    triggers = [control.change for control in ui.view_controls]
    if hasattr(ui.model_choice, "change"):
        triggers.append(ui.model_choice.change)
    gr.on(
        triggers, bind(chat.on_view, *parts), inputs=inputs, outputs=view, api_name="chat_view",
        trigger_mode="always_last", **api,
    )  # fmt: skip
    root = gr.context.Context.root_block
    if root is not None:
        root.load(bind(chat.on_view, *parts), inputs=inputs, outputs=view, **private)
