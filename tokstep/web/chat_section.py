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

from collections.abc import Callable
from typing import Any

import gradio as gr
from gradio.components import Component

from tokstep.core.model import LanguageModel
from tokstep.web import chat_handlers as chat
from tokstep.web.bind import bind
from tokstep.web.chat_layout import ChatUI, buttons, conversation, reply_view, settings_accordion
from tokstep.web.constants import STATE_TTL_S

__all__ = ["add_chat"]


def add_chat(model_choice: Component, lm_for: Callable[[Any], LanguageModel], *, autorun_workers: int = 32) -> None:
    """Build the chat section inside the current `gr.Blocks`.

    `model_choice` holds the session's model name (a dropdown or a gr.State); `lm_for(name)`
    gives that model. `autorun_workers`: Auto-runs at once (they mostly pause between tokens).
    """
    state = gr.State(None, time_to_live=STATE_TTL_S)  # first, as on the main page
    with gr.Column(elem_id="chat"):
        ui = ChatUI(state, model_choice, conversation(), buttons(), reply_view(), settings_accordion())
    wire_chat(ui, lm_for, autorun_workers)


def wire_chat(ui: ChatUI, lm_for: Callable[[Any], LanguageModel], autorun_workers: int) -> None:
    """Every event of the chat section, each to its handler; the named ones are callable by API
    clients (undocumented), as tokstep.web.page's events."""
    parts = (ui, lm_for)  # what every handler is bound to
    inputs = {ui.state, ui.model_choice, *ui.controls}
    view, message, press = ui.view_outputs, ui.conversation.message, ui.buttons
    raw = {"preprocess": False, "show_progress": "hidden"}
    api = {**raw, "api_visibility": "undocumented"}
    private = {**raw, "api_visibility": "private"}

    autorun_event = press.autorun.click(
        bind(chat.on_autorun, *parts), inputs=inputs, outputs=view, api_name="chat_autorun",
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
