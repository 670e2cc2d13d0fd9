"""The chat section's components, part by part, and `ChatUI`: all of them in one object.

Each function builds one part inside the current `gr.Blocks`, top to bottom, and returns its
components; the chat's handlers (tokstep.web.chat_handlers) are given the `ChatUI`. As on the main
page (tokstep.web.page_layout), creation order is the order API clients send an event's inputs in:
the settings controls are created in the order of tokstep.web.settings.CHAT_CONTROLS.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr
from gradio.components import Component

from tokstep.web.assets import PROMPT_COLOR, RANK_COLORS
from tokstep.web.chat_view import SPECIAL_COLOR, TEMPLATE_COLOR, ChatView
from tokstep.web.constants import (
    DEFAULT_REPLY_TOKENS,
    DEFAULT_SPEED,
    DEFAULT_TOP_K,
    GREEDY,
    MAX_REPLY_TOKENS,
    MAX_SPEED,
    MAX_TOP_K,
    MIN_SPEED,
    SAMPLE,
    SPEED_STEP,
    TEMPERATURE_RANGE,
)

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
class Conversation:
    """The chat itself and the box to write in."""

    chatbot: gr.Chatbot
    message: gr.Textbox
    send: gr.Button


@dataclass(frozen=True)
class ChatButtons:
    step: gr.Button
    autorun: gr.Button
    stop: gr.Button
    undo: gr.Button
    clear: gr.Button


@dataclass(frozen=True)
class ReplyView:
    """The reply's next-token candidates, its tokens (the template's too, when asked), the status."""

    topk: gr.Label
    show_template: gr.Checkbox
    tokens: gr.HighlightedText
    status: gr.Markdown


@dataclass(frozen=True)
class ChatControls:
    """The chat's settings accordion: greedy or sampling, the top-k size, Auto-run's tokens and speed."""

    mode: gr.Radio
    temperature: gr.Slider
    seed: gr.Number
    top_k_size: gr.Slider
    autorun_tokens: gr.Slider
    speed: gr.Slider


@dataclass(frozen=True)
class ChatUI:
    """Every component a chat event reads or writes. `model_choice` is the page's (a dropdown or a
    gr.State holding the session's model name)."""

    state: gr.State  # the session's ChatSession
    model_choice: Component
    conversation: Conversation
    buttons: ChatButtons
    reply: ReplyView
    settings: ChatControls

    @property
    def controls(self) -> list[Component]:
        """Every settings control, in the order of tokstep.web.settings.CHAT_CONTROLS."""
        s = self.settings
        return [self.reply.show_template, s.mode, s.temperature, s.seed, s.top_k_size, s.autorun_tokens, s.speed]

    @property
    def view_controls(self) -> list[Component]:
        """The controls that change what the view shows (Auto-run's two do not)."""
        s = self.settings
        return [self.reply.show_template, s.mode, s.temperature, s.seed, s.top_k_size]

    @property
    def view_outputs(self) -> list[Component]:
        """The outputs a `ChatView` fills, in its order."""
        reply = self.reply
        return [self.state, self.conversation.chatbot, reply.topk, reply.tokens, reply.status]

    def show(self, shown: ChatView) -> dict[Component, Any]:
        """An event's update for `shown`: every view output's new value."""
        return dict(zip(self.view_outputs, shown, strict=True))


def conversation() -> Conversation:
    gr.Markdown(INTRO, elem_id="chat-intro")
    chatbot = gr.Chatbot(
        label="Chat", elem_id="chat-bot", height=320, feedback_options=None, buttons=["copy", "copy_all"]
    )
    with gr.Row():
        message = gr.Textbox(
            label="Your message", placeholder="Say something to the model", lines=2, scale=4, elem_id="chat-message"
        )
        send = gr.Button("Send", variant="primary", scale=1, elem_id="chat-send")
    return Conversation(chatbot, message, send)


def buttons() -> ChatButtons:
    with gr.Row():
        return ChatButtons(
            step=gr.Button("Step", elem_id="chat-step"),
            autorun=gr.Button("Auto-run", elem_id="chat-autorun"),
            stop=gr.Button("Stop", variant="stop", elem_id="chat-stop"),
            undo=gr.Button("Undo", elem_id="chat-undo"),
            clear=gr.Button("Clear the chat", elem_id="chat-clear"),
        )


def reply_view() -> ReplyView:
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
    return ReplyView(topk, show_template, tokens, status)


def settings_accordion() -> ChatControls:
    with gr.Accordion("Chat settings: greedy or sampling, top-k size, Auto-run", open=False, elem_id="chat-settings"):
        with gr.Row():
            mode = gr.Radio([GREEDY, SAMPLE], value=GREEDY, label="How Step and Auto-run choose", elem_id="chat-mode")
            temperature = gr.Slider(
                *TEMPERATURE_RANGE, value=1.0, step=0.05, label="Temperature", elem_id="chat-temperature"
            )
            seed = gr.Number(value=0, precision=0, minimum=0, label="Seed", elem_id="chat-seed")
        with gr.Row():
            top_k_size = gr.Slider(
                1, MAX_TOP_K, value=DEFAULT_TOP_K, step=1, label="Top-k size (candidates shown)",
                elem_id="chat-topk-size",
            )  # fmt: skip
            autorun_tokens = gr.Slider(
                1, MAX_REPLY_TOKENS, value=DEFAULT_REPLY_TOKENS, step=1, label="Most tokens per Auto-run",
                elem_id="chat-autorun-tokens",
            )  # fmt: skip
            speed = gr.Slider(
                MIN_SPEED, MAX_SPEED, value=DEFAULT_SPEED, step=SPEED_STEP, label="Speed (tokens per second)",
                elem_id="chat-speed",
            )  # fmt: skip
    return ChatControls(mode, temperature, seed, top_k_size, autorun_tokens, speed)
