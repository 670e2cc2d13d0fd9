"""The demo through a real launched Gradio server, driven with gradio_client."""

from __future__ import annotations

import time

import pytest
from conftest import SETTINGS
from gradio_client import Client
from gradio_client.exceptions import AppError

import tokstep

PROMPT = "Once upon a time"

# Outputs of the UI events, in order (gr.State is not sent to API clients).
TOKENS, TOPK, STATUS, TOKEN_TABLE, TOPK_TABLE, TEXT = range(6)


@pytest.fixture
def client(server_url) -> Client:
    """A new client is a new browser session with its own state."""
    return Client(server_url, verbose=False)


def token_entries(view) -> list[tuple[str, str]]:
    return [(entry["token"], entry["class_or_confidence"]) for entry in view[TOKENS]["value"]]


def table_rows(table: dict) -> list[list]:
    """Rows of a Dataframe output, sent as a value or as an update with new headers."""
    return table["value"]["data"] if "value" in table else table["data"]


def generated_ids(view) -> list[int]:
    """Ids of the generated tokens: their chips read "+286 · #1" (id, rank, how chosen)."""
    return [int(cls.split()[0][1:]) for _, cls in token_entries(view) if cls.startswith("+")]


def prompt_ids(view) -> list[int]:
    return [int(cls.split()[0]) for _, cls in token_entries(view) if not cls.startswith("+")]


def greedy(lm, prompt: str, n: int) -> list[int]:
    return [step.token_id for step in tokstep.generate_steps(lm, prompt, max_new_tokens=n)]


def test_reset_shows_the_prompt_tokens_with_ids_and_the_next_token_top_k(client, tiny_lm):
    view = client.predict(PROMPT, *SETTINGS, api_name="/reset")
    assert prompt_ids(view) == tokstep.tokenize(tiny_lm.tokenizer, PROMPT)
    assert generated_ids(view) == []
    first = next(tokstep.generate_steps(tiny_lm, PROMPT, max_new_tokens=1, top_k=5))
    labels = [c["label"] for c in view[TOPK]["confidences"]]
    assert labels == [f"{c.token.replace(' ', '␣')} ({c.token_id})" for c in first.top]
    assert [c["confidence"] for c in view[TOPK]["confidences"]] == pytest.approx([c.prob for c in first.top], abs=1e-6)
    # The notebook's two tables.
    assert [row[1] for row in table_rows(view[TOKEN_TABLE])] == prompt_ids(view)
    assert [row[0] for row in table_rows(view[TOPK_TABLE])] == [c.token_id for c in first.top]
    assert view[TEXT] == PROMPT


def test_step_appends_exactly_one_greedy_token(client, tiny_lm):
    client.predict(PROMPT, *SETTINGS, api_name="/reset")
    expected = greedy(tiny_lm, PROMPT, 3)
    for count in range(1, 4):
        view = client.predict(PROMPT, *SETTINGS, api_name="/step")
        assert generated_ids(view) == expected[:count]
    assert view[TEXT] == PROMPT + tiny_lm.texts.decode(expected)
    assert "Appended" in view[STATUS]


def test_autorun_streams_one_update_per_token(client, tiny_lm):
    client.predict(PROMPT, *SETTINGS, api_name="/reset")
    job = client.submit(PROMPT, 6, 20.0, *SETTINGS, api_name="/autorun")
    updates = list(job)
    expected = greedy(tiny_lm, PROMPT, 6)
    assert [generated_ids(view) for view in updates] == [expected[:n] for n in range(1, 7)]
    assert "Stopped" in updates[-1][STATUS]


def test_autorun_is_paced_for_a_person_to_follow(client):
    client.predict(PROMPT, *SETTINGS, api_name="/reset")
    started = time.monotonic()
    updates = list(client.submit(PROMPT, 4, 5.0, *SETTINGS, api_name="/autorun"))
    elapsed = time.monotonic() - started
    assert len(updates) == 4
    # Three pauses of 1/5 s between four tokens: the run cannot be faster than that.
    assert elapsed >= 0.6


def test_stop_cancels_autorun_and_keeps_the_text(client, tiny_lm):
    client.predict(PROMPT, *SETTINGS, api_name="/reset")
    job = client.submit(PROMPT, 60, 4.0, *SETTINGS, api_name="/autorun")
    deadline = time.monotonic() + 30
    while len(job.outputs()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    job.cancel()
    deadline = time.monotonic() + 10
    while not job.done() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job.done()
    shown = len(generated_ids(job.outputs()[-1]))
    time.sleep(0.6)  # longer than one paced step: a run that was not stopped would go on
    view = client.predict(PROMPT, *SETTINGS, api_name="/step")
    kept = generated_ids(view)
    expected = greedy(tiny_lm, PROMPT, len(kept))
    assert kept == expected  # the text so far was kept, and Step continues it
    assert shown + 1 <= len(kept) <= shown + 2  # at most the step in flight when Stop came
    assert len(kept) < 20


def test_two_sessions_do_not_see_each_others_tokens(server_url, tiny_lm):
    alice, bob = Client(server_url, verbose=False), Client(server_url, verbose=False)
    alice.predict(PROMPT, *SETTINGS, api_name="/reset")
    bob.predict("Hello world", *SETTINGS, api_name="/reset")
    for _ in range(3):
        alice_view = alice.predict(PROMPT, *SETTINGS, api_name="/step")
    bob_view = bob.predict("Hello world", *SETTINGS, api_name="/step")
    assert generated_ids(alice_view) == greedy(tiny_lm, PROMPT, 3)
    assert prompt_ids(bob_view) == tokstep.tokenize(tiny_lm.tokenizer, "Hello world")
    assert generated_ids(bob_view) == greedy(tiny_lm, "Hello world", 1)


def test_editing_the_prompt_starts_over(client, tiny_lm):
    client.predict(PROMPT, *SETTINGS, api_name="/reset")
    client.predict(PROMPT, *SETTINGS, api_name="/step")
    view = client.predict("The cat", *SETTINGS, api_name="/reset")
    assert prompt_ids(view) == tokstep.tokenize(tiny_lm.tokenizer, "The cat")
    assert generated_ids(view) == []
    view = client.predict("The cat", *SETTINGS, api_name="/step")
    assert generated_ids(view) == greedy(tiny_lm, "The cat", 1)


def test_empty_prompt_gets_a_clear_message(client):
    view = client.predict("   ", *SETTINGS, api_name="/reset")
    assert "prompt is empty" in view[STATUS]
    with pytest.raises(AppError, match="prompt is empty"):
        client.predict("   ", *SETTINGS, api_name="/step")


def test_too_long_prompt_says_how_many_tokens_fit(client, tiny_lm):
    long_prompt = " word" * (tiny_lm.context_length + 10)
    view = client.predict(long_prompt, *SETTINGS, api_name="/reset")
    assert f"reads at most {tiny_lm.context_length} tokens" in view[STATUS]
    assert generated_ids(view) == [] and prompt_ids(view) == []


def test_stepping_to_the_end_of_the_context_stops_with_a_reason(client, tiny_lm):
    prompt = " word" * (tiny_lm.context_length - 2)
    client.predict(prompt, *SETTINGS, api_name="/reset")
    updates = list(client.submit(prompt, 10, 20.0, *SETTINGS, api_name="/autorun"))
    assert len(updates) == 2
    assert "context is full" in updates[-1][STATUS]
    view = client.predict(prompt, *SETTINGS, api_name="/step")  # one more: refused, nothing lost
    assert len(generated_ids(view)) == 2
    assert "context is full" in view[STATUS]


def test_generate_api_streams_one_json_update_per_token(client, tiny_lm):
    updates = list(client.submit(PROMPT, 8, api_name="/generate"))
    steps = list(tokstep.generate_steps(tiny_lm, PROMPT, max_new_tokens=8, top_k=5))
    assert len(updates) == 8
    for n, (update, step) in enumerate(zip(updates, steps, strict=True), start=1):
        assert update["token_id"] == step.token_id
        assert update["token"] == step.token
        assert update["prob"] == pytest.approx(step.prob, abs=1e-7)
        assert [c[0] for c in update["top"]] == [c.token_id for c in step.top]
        assert [c[2] for c in update["top"]] == pytest.approx([c.prob for c in step.top], abs=1e-7)
        assert update["text"] == PROMPT + tiny_lm.texts.decode([s.token_id for s in steps[:n]])
    assert updates[-1]["stop_reason"] == "max_new_tokens"


@pytest.mark.parametrize(
    ("prompt", "max_new_tokens", "message"),
    [
        ("", 5, "prompt is empty"),
        ("  \n ", 5, "prompt is empty"),
        (PROMPT, 0, "max_new_tokens must be a whole number from 1"),
        (PROMPT, -4, "max_new_tokens must be a whole number from 1"),
        (PROMPT, 10**9, "max_new_tokens must be a whole number from 1"),
        (PROMPT, "ten", "max_new_tokens must be a whole number from 1"),
        (PROMPT, 2.5, "max_new_tokens must be a whole number from 1"),
        (" word" * 100, 5, "Shorten the prompt"),
    ],
)
def test_generate_api_rejects_bad_arguments_with_a_clear_error(client, prompt, max_new_tokens, message):
    with pytest.raises(AppError, match=message):
        client.predict(prompt, max_new_tokens, api_name="/generate")
    # The server keeps serving.
    assert len(list(client.submit(PROMPT, 2, api_name="/generate"))) == 2
