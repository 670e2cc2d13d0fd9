"""Chat mode through a real launched Gradio server, driven with gradio_client: Send, Step,
Auto-run, Undo, the template's tokens, and bad input that changes nothing."""

from __future__ import annotations

import gradio as gr
import pytest
from conftest import serving
from gradio_client import Client
from gradio_client.exceptions import AppError
from test_chat import MESSAGE, chat_lm, chat_model_dir, greedy_reply, im_end, plain_lm  # noqa: F401 (fixtures)

from tokstep.core.chat import MAX_MESSAGE_CHARS, control_token_ids, start_turn
from tokstep.web.chat_section import add_chat
from tokstep.web.settings import chat_arguments
from tokstep.web.views import label_key

# The chat events' default settings, after the model name (and Send's message), in the order
# tokstep.web.settings.chat_arguments knows.
SETTINGS = chat_arguments()
WITH_TEMPLATE = chat_arguments(show_template=True)
FAST = chat_arguments(speed=20.0)  # Auto-run at 20 tokens per second
# Outputs of the chat events, in order (gr.State is not sent to API clients); Send adds the message box.
BOT, TOPK, TOKENS, STATUS, MESSAGE_BOX = range(5)


@pytest.fixture(scope="module")
def chat_url(chat_lm, plain_lm):  # noqa: F811
    """A page with a model dropdown (a chat model, and one without a template) and the chat section."""
    models = {"chat-model": chat_lm, "plain-model": plain_lm}
    with gr.Blocks() as demo:
        choice = gr.Dropdown(list(models), value="chat-model", label="Model", elem_id="model")
        add_chat(choice, lambda name: models[name])
    with serving(demo) as url:
        yield url


@pytest.fixture
def client(chat_url) -> Client:
    return Client(chat_url, verbose=False)


def bot_messages(view) -> list[tuple[str, str]]:
    """(role, text) of each Chatbot message."""
    return [(m["role"], "".join(part["text"] for part in m["content"])) for m in view[BOT]]


def chip_categories(view) -> list[str]:
    return [entry["class_or_confidence"] for entry in view[TOKENS]["value"]]


def test_send_then_step_writes_the_reply_into_the_chatbot(client, chat_lm):  # noqa: F811
    turn = start_turn(chat_lm, [], MESSAGE)
    reply = greedy_reply(chat_lm, turn.stepper.ids)
    view = client.predict("chat-model", MESSAGE, *SETTINGS, api_name="/chat_send")
    assert bot_messages(view) == [("user", MESSAGE)]
    assert view[MESSAGE_BOX] == ""  # the box is emptied for the next message
    top, _ = turn.stepper.next_top(5)
    assert [c["label"] for c in view[TOPK]["confidences"]] == [label_key(c.token_id, c.token) for c in top]
    assert chip_categories(view) == []  # no reply token yet
    for n in (1, 2, 3):
        view = client.predict("chat-model", *SETTINGS, api_name="/chat_step")
        assert chip_categories(view) == [f"+{i} · #1" for i in reply[:n]]  # exactly one more token, greedy
        # Gradio's Chatbot drops the message's leading and trailing spaces.
        assert bot_messages(view) == [("user", MESSAGE), ("assistant", chat_lm.tokenizer.decode(reply[:n]).strip())]
    assert f"**{n}** reply tokens" in view[STATUS]
    view = client.predict("chat-model", *SETTINGS, api_name="/chat_undo")
    assert chip_categories(view) == [f"+{i} · #1" for i in reply[:2]]


def test_autorun_streams_the_reply_until_the_model_ends_its_turn(client, chat_lm):  # noqa: F811
    reply = greedy_reply(chat_lm, start_turn(chat_lm, [], MESSAGE).stepper.ids)
    assert reply[-1] == im_end(chat_lm)
    client.predict("chat-model", MESSAGE, *SETTINGS, api_name="/chat_send")
    job = client.submit("chat-model", *FAST, api_name="/chat_autorun")
    job.result()
    updates = job.outputs()
    assert [len(chip_categories(u)) for u in updates] == list(range(1, len(reply) + 1))  # one update per token
    last = updates[-1]
    assert chip_categories(last)[-1] == f"+{im_end(chat_lm)} · #1 · end of turn"
    assert bot_messages(last)[-1] == ("assistant", chat_lm.tokenizer.decode(reply[:-1]).strip())
    assert "ended its turn" in last[STATUS] and not last[TOPK].get("confidences")  # no next token to offer
    # Step now says the turn is over and changes nothing.
    after = client.predict("chat-model", *SETTINGS, api_name="/chat_step")
    assert "turn is over" in after[STATUS]
    assert bot_messages(after) == bot_messages(last) and chip_categories(after) == chip_categories(last)


def test_the_templates_tokens_are_shown_on_request(client, chat_lm):  # noqa: F811
    turn = start_turn(chat_lm, [], MESSAGE)
    client.predict("chat-model", MESSAGE, *SETTINGS, api_name="/chat_send")
    view = client.predict("chat-model", *WITH_TEMPLATE, api_name="/chat_step")
    categories = chip_categories(view)
    ids = list(turn.stepper.ids)  # the template, before the reply
    assert [int(c.split()[0].lstrip("+")) for c in categories] == [*ids, turn.step().token_id]
    controls = control_token_ids(chat_lm.tokenizer)
    assert [c for c in categories if c.endswith("special")] == [f"{i} · special" for i in ids if i in controls]
    texts = [entry["token"] for entry in view[TOKENS]["value"]]
    assert texts[0] == "<|im_start|>" and "<|im_end|>" in texts
    hidden = client.predict("chat-model", *SETTINGS, api_name="/chat_view")
    assert chip_categories(hidden) == categories[len(ids) :]  # only the reply's tokens


def test_bad_input_gets_a_clear_message_and_the_chat_stays(client, chat_lm):  # noqa: F811
    client.predict("chat-model", MESSAGE, *SETTINGS, api_name="/chat_send")
    shown = client.predict("chat-model", *SETTINGS, api_name="/chat_step")
    too_long = " ".join(["dog"] * chat_lm.context_length)
    bad = {
        "": "empty",
        "  \n ": "empty",
        too_long: f"reads at most {chat_lm.context_length} tokens",
        "x" * (MAX_MESSAGE_CHARS + 1): f"at most {MAX_MESSAGE_CHARS:,}",
        12: "must be text",
    }
    for message, why in bad.items():
        with pytest.raises(AppError, match=why):
            client.predict("chat-model", message, *SETTINGS, api_name="/chat_send")
    with pytest.raises(AppError, match="mode must be"):
        client.predict("chat-model", *chat_arguments(mode="beam search"), api_name="/chat_step")
    with pytest.raises(AppError, match="Top-k size must be a whole number from 1 to 20"):
        client.predict("chat-model", *chat_arguments(top_k=0), api_name="/chat_view")
    with pytest.raises(AppError, match="Speed must be a number"):
        client.predict("chat-model", *chat_arguments(tokens=5, speed=1000), api_name="/chat_autorun")
    now = client.predict("chat-model", *SETTINGS, api_name="/chat_view")
    assert bot_messages(now) == bot_messages(shown) and chip_categories(now) == chip_categories(shown)


def test_step_and_undo_before_any_message_say_what_to_do(client):
    view = client.predict("chat-model", *SETTINGS, api_name="/chat_step")
    assert "press Send first" in view[STATUS] and bot_messages(view) == []
    view = client.predict("chat-model", *SETTINGS, api_name="/chat_undo")
    assert "Nothing to undo" in view[STATUS]


def test_a_model_without_a_chat_template_says_so_and_keeps_the_chat(client, chat_lm):  # noqa: F811
    view = client.predict("plain-model", *SETTINGS, api_name="/chat_view")
    assert "This model has no chat template: choose a chat model" in view[STATUS]
    # Send says so in one titled pop-up (a warning, not an error) and changes nothing.
    before = client.predict("plain-model", *SETTINGS, api_name="/chat_view")
    sent = client.predict("plain-model", MESSAGE, *SETTINGS, api_name="/chat_send")
    assert bot_messages(sent) == bot_messages(before) and "no chat template" in sent[STATUS]
    for event in ("/chat_step", "/chat_undo"):
        assert "no chat template" in client.predict("plain-model", *SETTINGS, api_name=event)[STATUS].lower()
    # Back on the chat model, a chat written there keeps its text across a switch.
    client.predict("chat-model", MESSAGE, *SETTINGS, api_name="/chat_send")
    written = client.predict("chat-model", *SETTINGS, api_name="/chat_step")
    switched = client.predict("plain-model", *SETTINGS, api_name="/chat_view")
    assert bot_messages(switched) == bot_messages(written)
    assert "no chat template" in switched[STATUS]
