"""Whatever anyone types or sends: a clear message, the server keeps serving, nothing is lost."""

from __future__ import annotations

import pytest
from conftest import SETTINGS
from gradio_client import Client
from gradio_client.exceptions import AppError
from test_server import STATUS, TEXT, TOKENS, generated_ids, greedy

import tokstep
from tokstep.web.api import MAX_PROMPT_CHARS

PROMPT = "Once upon a time"

UNUSUAL_TEXT = {
    "control characters and NUL": "a\x00b\x01c\x1b[31mred\x7f",
    "emoji": "I like 😀🤖👩‍👩‍👧",
    "CJK": "東京は日本の首都です。中文",
    "right-to-left": "שלום עולם مرحبا بالعالم",
    "combining marks": "Ame\u0301lie n\u0303 Z\u0351\u0363a\u0364l\u0365g\u0310o",
}


@pytest.fixture
def client(server_url) -> Client:
    return Client(server_url, verbose=False)


def assert_still_serving(client: Client) -> None:
    assert len(list(client.submit(PROMPT, 2, api_name="/generate"))) == 2


@pytest.mark.parametrize("prompt", ["", " ", "\n\t  \n"])
def test_empty_or_blank_prompt(client, prompt):
    assert "prompt is empty" in client.predict(prompt, *SETTINGS, api_name="/reset")[STATUS]
    with pytest.raises(AppError, match="prompt is empty"):
        client.predict(prompt, 5, api_name="/generate")
    assert_still_serving(client)


def test_a_200000_character_prompt_is_refused_quickly(client):
    huge = "All work and no play makes Jack a dull boy. " * 4546  # 200,024 characters
    assert len(huge) > 200_000
    view = client.predict(huge, *SETTINGS, api_name="/reset")
    assert f"at most {MAX_PROMPT_CHARS:,} characters" in view[STATUS]
    with pytest.raises(AppError, match="characters long"):
        client.predict(huge, 5, api_name="/generate")
    assert_still_serving(client)


def test_more_tokens_than_the_context_says_how_many_fit(client, tiny_lm):
    prompt = " cat" * (tiny_lm.context_length * 2)
    view = client.predict(prompt, *SETTINGS, api_name="/reset")
    assert f"at most {tiny_lm.context_length - 1} tokens" in view[STATUS]
    with pytest.raises(AppError, match=f"is {tiny_lm.context_length * 2} tokens"):
        client.predict(prompt, 5, api_name="/generate")


@pytest.mark.parametrize("kind", UNUSUAL_TEXT)
def test_unusual_text_is_stepped_and_shown_honestly(client, tiny_lm, kind):
    prompt = UNUSUAL_TEXT[kind]
    ids = tokstep.tokenize(tiny_lm.tokenizer, prompt)
    view = client.predict(prompt, *SETTINGS, api_name="/reset")
    entries = view[TOKENS]["value"]
    assert [int(e["class_or_confidence"].split()[0]) for e in entries] == ids
    assert all("\ufffd" not in e["token"] for e in entries), "partial characters are shown as bytes"
    assert view[TEXT] == prompt
    view = client.predict(prompt, *SETTINGS, api_name="/step")
    assert generated_ids(view) == greedy(tiny_lm, prompt, 1)
    updates = list(client.submit(prompt, 3, api_name="/generate"))
    assert [u["token_id"] for u in updates] == greedy(tiny_lm, prompt, 3)
    assert updates[-1]["text"].startswith(prompt)


def test_control_characters_are_drawn_not_swallowed(client):
    view = client.predict("a\x00b", *SETTINGS, api_name="/reset")
    shown = "".join(e["token"] for e in view[TOKENS]["value"])
    assert "␀" in shown


@pytest.mark.parametrize(
    ("n_tokens", "speed", "message"),
    [
        ("many", 3.0, "Tokens to auto-run must be a whole number from 1 to 256"),
        (0, 3.0, "Tokens to auto-run must be a whole number"),
        (10**6, 3.0, "Tokens to auto-run must be a whole number"),
        (5, 0, "Speed must be a number from 0.5 to 20"),
        (5, "fast", "Speed must be a number"),
    ],
)
def test_bad_autorun_settings_keep_the_text(client, tiny_lm, n_tokens, speed, message):
    client.predict(PROMPT, *SETTINGS, api_name="/reset")
    client.predict(PROMPT, *SETTINGS, api_name="/step")
    client.predict(PROMPT, *SETTINGS, api_name="/step")
    with pytest.raises(AppError, match=message):
        client.submit(PROMPT, n_tokens, speed, *SETTINGS, api_name="/autorun").result()
    view = client.predict(PROMPT, *SETTINGS, api_name="/step")  # the two tokens are still there
    assert generated_ids(view) == greedy(tiny_lm, PROMPT, 3)


def test_a_token_with_backticks_does_not_break_the_status(client):
    view = client.predict("Say ``` and `", *SETTINGS, api_name="/reset")
    assert "prompt tokens" in view[STATUS]
