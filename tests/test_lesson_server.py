"""What a first-time student and a teacher tripped on, through a real server (gradio_client): Step
stops at the end of the text and "Continue past the end" goes on; Undo names the token it took back;
Auto-run's buttons come back when it ends; a model without a chat template offers a chat model; models
that cannot load are marked at start-up, without the network and without exception names; a user's
mistake logs one line, not a traceback; and a chat turn on the bundled chat model, offline."""

from __future__ import annotations

import logging

import pytest
from conftest import SETTINGS, serving
from gradio_client import Client
from gradio_client.exceptions import AppError

import tokstep
from tokstep.core.chat import has_chat_template
from tokstep.web.model_choice import (
    NO_HUB_REASON,
    OFFLINE_REASON,
    ModelCache,
    chat_models,
    describe,
    has_chat_template_files,
    unavailable_models,
)
from tokstep.web.page import create_demo
from tokstep.web.settings import chat_arguments

TOKENS, TOPK, STATUS, TOKEN_TABLE, TOPK_TABLE, TEXT = range(6)
END = "The end.<|endoftext|>"  # GPT-2's tokenizer reads the control token: the prompt ends at end-of-text


@pytest.fixture
def client(server_url) -> Client:
    return Client(server_url, verbose=False)


def chips(view) -> list[str]:
    return [entry["class_or_confidence"] for entry in view[TOKENS]["value"]]


def test_step_stops_at_the_end_of_text_and_continue_goes_past_it(client, tiny_lm):
    view = client.predict(END, *SETTINGS, api_name="/reset")
    assert chips(view)[-1] == str(tiny_lm.tokenizer.eos_token_id)
    stopped = client.predict(END, *SETTINGS, api_name="/step")
    assert chips(stopped) == chips(view)  # nothing was appended
    assert "**End of text:**" in stopped[STATUS] and "Continue past the end" in stopped[STATUS]
    past = client.predict(END, *SETTINGS, api_name="/continue")
    assert len(chips(past)) == len(chips(view)) + 1 and chips(past)[-1].startswith("+")
    # After a token that is not end-of-text, Step steps as ever.
    assert len(chips(client.predict(END, *SETTINGS, api_name="/step"))) == len(chips(view)) + 2


def test_undo_names_the_token_it_took_back(client, tiny_lm):
    client.predict("Once upon a time", *SETTINGS, api_name="/reset")
    stepped = client.predict("Once upon a time", *SETTINGS, api_name="/step")
    token_id = int(chips(stepped)[-1].split()[0].lstrip("+"))
    undone = client.predict("Once upon a time", *SETTINGS, api_name="/undo")
    shown = tiny_lm.texts.text(token_id).replace(" ", "␣")
    assert f"Took back `{shown}` (id {token_id})." in undone[STATUS]


def test_autorun_sends_one_update_per_token_with_its_buttons(client):
    client.predict("Once upon a time", *SETTINGS, api_name="/reset")
    updates = list(client.submit("Once upon a time", 3, 20.0, *SETTINGS, api_name="/autorun"))
    # The buttons' running state rides on the token updates (and is not sent to API clients): the
    # last one puts them back, with no update of its own. tests/test_lesson_browser.py sees them.
    assert len(updates) == 3 and updates[-1][TEXT].startswith("Once upon a time")


def test_a_model_without_a_chat_template_offers_one_on_the_list(tiny_lm, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert has_chat_template_files("tinystories-chat") and not has_chat_template_files("tinystories")
    cache = ModelCache([tiny_lm.name, "tinystories", "tinystories-chat", "gpt2-not-here"], loaded=[tiny_lm])
    cache.unavailable.update(unavailable_models(cache.allowed, loaded=[tiny_lm.name]))
    assert chat_models(cache) == ["tinystories-chat"]


def test_models_that_cannot_load_are_marked_at_start_up_without_the_network(tiny_model_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    names = ["tinystories", str(tiny_model_dir), "tokstep-test/no-such-model-anywhere"]
    assert unavailable_models(names) == {"tokstep-test/no-such-model-anywhere": OFFLINE_REASON}
    assert describe("x", {"x": OFFLINE_REASON}) == f"x (unavailable: {OFFLINE_REASON})"
    cache = ModelCache(names, unavailable=unavailable_models(names))
    with pytest.raises(tokstep.ModelLoadError, match="unavailable here: not downloaded, and this server is offline"):
        cache.get("tokstep-test/no-such-model-anywhere")


def test_an_unreachable_hub_is_one_short_reason_without_exception_names(tiny_lm, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    dead_proxy = "http://127.0.0.1:9"  # nothing listens there: requests fail at once, as with no network
    for variable in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(variable, dead_proxy)
    unavailable = unavailable_models(["tokstep-test/no-such-model-anywhere"])
    assert unavailable == {"tokstep-test/no-such-model-anywhere": NO_HUB_REASON}
    # A load that fails with the network's error says so in words: no exception class on the page.
    failing = ModelCache(["tokstep-test/no-such-model-anywhere"])
    with pytest.raises(tokstep.ModelLoadError) as caught:
        failing.get("tokstep-test/no-such-model-anywhere")
    assert "Error)" not in str(caught.value) and "could not be reached" in str(caught.value)


def test_a_users_mistake_logs_one_line_and_no_traceback(client, capfd, caplog):
    caplog.set_level(logging.WARNING, logger="tokstep")
    with pytest.raises(AppError, match="empty"):
        client.predict("", 5, api_name="/generate")
    with pytest.raises(AppError, match="Speed must be a number"):
        client.submit("Once upon a time", 3, 1000.0, *SETTINGS, api_name="/autorun").result()
    assert "Traceback" not in capfd.readouterr().err  # Gradio printed none
    lines = [record.getMessage() for record in caplog.records if record.name == "tokstep"]
    assert [line.split(":")[:2] for line in lines] == [["tokstep", " Cannot generate"], ["tokstep", " Bad setting"]]


@pytest.fixture(scope="module")
def bundled_chat_url(tiny_lm):
    if "tinystories-chat" not in tokstep.bundled_models():
        pytest.skip("the bundled chat model is not there")
    with serving(create_demo(tokstep.load("tinystories-chat"), models=[])) as url:
        yield url


def test_a_chat_turn_on_the_bundled_chat_model_offline(bundled_chat_url, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    client = Client(bundled_chat_url, verbose=False)
    settings = chat_arguments()
    sent = client.predict("Tell me a story about a cat.", *settings, api_name="/chat_send")
    assert "press Step or Auto-run" in sent[3]
    last = list(client.submit(*chat_arguments(tokens=200, speed=20.0), api_name="/chat_autorun"))[-1]
    assert "ended its turn" in last[3]
    reply = [m for m in last[0] if m["role"] == "assistant"][-1]
    assert len("".join(part["text"] for part in reply["content"]).split()) >= 5
    assert has_chat_template(tokstep.load("tinystories-chat").tokenizer)
