"""Exploring the model's choices through a real server: Undo, seeded sampling, top-k size,
colours by rank, and /generate's optional sampling arguments."""

from __future__ import annotations

import pytest
from conftest import SETTINGS
from gradio_client import Client
from gradio_client.exceptions import AppError
from test_server import STATUS, TEXT, TOKENS, TOPK, TOPK_TABLE, generated_ids, greedy, table_rows

import tokstep
from tokstep.core.sampling import SamplingSettings
from tokstep.web.assets import PROMPT_COLOR, RANK_COLORS
from tokstep.web.constants import SAMPLE
from tokstep.web.settings import page_arguments

PROMPT = "Once upon a time"
SAMPLED = page_arguments(mode=SAMPLE, temperature=1.2, sample_top_k=40, top_p=0.95, seed=7)


@pytest.fixture
def client(server_url) -> Client:
    return Client(server_url, verbose=False)


def chips(view) -> list[str]:
    return [entry["class_or_confidence"] for entry in view[TOKENS]["value"]]


def test_undo_three_times_gives_back_exactly_the_earlier_page(client):
    client.predict(PROMPT, *SETTINGS, api_name="/reset")
    client.predict(PROMPT, *SETTINGS, api_name="/step")
    before = client.predict(PROMPT, *SETTINGS, api_name="/step")
    for _ in range(3):
        client.predict(PROMPT, *SAMPLED, api_name="/step")
    for _ in range(3):
        after = client.predict(PROMPT, *SETTINGS, api_name="/undo")
    assert chips(after) == chips(before)
    assert after[TOKENS] == before[TOKENS]
    assert [c["label"] for c in after[TOPK]["confidences"]] == [c["label"] for c in before[TOPK]["confidences"]]
    assert [c["confidence"] for c in after[TOPK]["confidences"]] == pytest.approx(
        [c["confidence"] for c in before[TOPK]["confidences"]], abs=1e-6
    )
    # Back to the prompt, and past it: a clear message, nothing lost.
    client.predict(PROMPT, *SETTINGS, api_name="/undo")
    at_prompt = client.predict(PROMPT, *SETTINGS, api_name="/undo")
    assert generated_ids(at_prompt) == []
    past_prompt = client.predict(PROMPT, *SETTINGS, api_name="/undo")
    assert chips(past_prompt) == chips(at_prompt)
    assert "Nothing to undo" in past_prompt[STATUS]


def test_autorun_with_a_seed_twice_gives_the_same_text(client, tiny_lm):
    texts = []
    for _ in range(2):
        client.predict(PROMPT, *SAMPLED, api_name="/reset")
        last = list(client.submit(PROMPT, 8, 20.0, *SAMPLED, api_name="/autorun"))[-1]
        texts.append(last[TEXT])
        assert all(chip.endswith(" sampled") for chip in chips(last)[len(chips(last)) - 8 :])
    assert texts[0] == texts[1]
    sampling = SamplingSettings(temperature=1.2, top_k=40, top_p=0.95, seed=7)
    steps = tokstep.generate_steps(tiny_lm, PROMPT, max_new_tokens=8, sampling=sampling)
    assert texts[0] == PROMPT + tiny_lm.texts.decode([s.token_id for s in steps])
    assert texts[0] != PROMPT + tiny_lm.texts.decode(greedy(tiny_lm, PROMPT, 8))


def test_sampling_shows_true_probabilities_with_a_second_column(client, tiny_lm):
    view = client.predict(PROMPT, *SAMPLED, api_name="/reset")
    rows = table_rows(view[TOPK_TABLE])
    assert view[TOPK_TABLE]["headers"] == ["id", "token", "p", "p after sampling settings"]
    # The column comes with the table's value, not as a new component (which Gradio would rebuild,
    # whole config and all, at every update: see tokstep.web.views.table).
    assert view[TOPK_TABLE].get("__type__") != "update"
    first = next(tokstep.generate_steps(tiny_lm, PROMPT, max_new_tokens=1, top_k=5))
    assert [row[0] for row in rows] == [c.token_id for c in first.top]
    assert [row[2] for row in rows] == pytest.approx([c.prob for c in first.top], abs=1e-6)  # the model's own
    assert [c["confidence"] for c in view[TOPK]["confidences"]] == pytest.approx([c.prob for c in first.top], abs=1e-6)
    assert [row[3] for row in rows] != [row[2] for row in rows]  # temperature and filters change the draw


def test_top_k_size_sets_how_many_candidates_are_shown(client):
    for k in (1, 12, 20):
        view = client.predict(PROMPT, *page_arguments(top_k=k), api_name="/reset")
        assert len(view[TOPK]["confidences"]) == k
        assert len(table_rows(view[TOPK_TABLE])) == k
    with pytest.raises(AppError, match="Top-k size must be a whole number from 1 to 20"):
        client.predict(PROMPT, *page_arguments(top_k=50), api_name="/reset")


def test_chips_show_rank_and_how_chosen_and_colour_by_rank(client, tiny_lm):
    client.predict(PROMPT, *SETTINGS, api_name="/reset")
    view = client.predict(PROMPT, *SAMPLED, api_name="/step")
    colours = view[TOKENS]["color_map"]
    stepper = tokstep.TokenStepper.from_text(tiny_lm, PROMPT)
    step = stepper.step(sampling=SamplingSettings(temperature=1.2, top_k=40, top_p=0.95, seed=7))
    chip = chips(view)[-1]
    assert chip == f"+{step.token_id} · #{step.rank} sampled"
    assert colours[chip] == RANK_COLORS[tokstep.rank_bucket(step.rank)]
    assert all(colours[c] == PROMPT_COLOR for c in chips(view)[:-1])  # prompt tokens, not scored


def test_prompt_tokens_scored_on_request(client, tiny_lm):
    view = client.predict(PROMPT, *page_arguments(score_prompt=True), api_name="/reset")
    scores = tokstep.score_prompt(tiny_lm, tokstep.tokenize(tiny_lm.tokenizer, PROMPT))
    assert chips(view) == [str(scores[0].token_id)] + [f"{s.token_id} · #{s.rank}" for s in scores[1:]]
    colours = view[TOKENS]["color_map"]
    assert [colours[c] for c in chips(view)[1:]] == [RANK_COLORS[tokstep.rank_bucket(s.rank)] for s in scores[1:]]


def test_generate_api_samples_with_a_seed_and_stays_greedy_by_default(client, tiny_lm):
    first = [u["token_id"] for u in client.submit(PROMPT, 6, True, 1.0, 0, 1.0, 3, api_name="/generate")]
    second = [u["token_id"] for u in client.submit(PROMPT, 6, True, 1.0, 0, 1.0, 3, api_name="/generate")]
    other_seed = [u["token_id"] for u in client.submit(PROMPT, 6, True, 1.0, 0, 1.0, 4, api_name="/generate")]
    assert first == second != other_seed
    sampling = SamplingSettings(seed=3)
    assert first == [s.token_id for s in tokstep.generate_steps(tiny_lm, PROMPT, 6, sampling=sampling)]
    updates = list(client.submit(PROMPT, 3, api_name="/generate"))  # old callers: greedy, unchanged
    assert [u["token_id"] for u in updates] == greedy(tiny_lm, PROMPT, 3)
    assert {u["chosen_by"] for u in updates} == {"greedy"}
    with pytest.raises(AppError, match="temperature must be a number above 0"):
        client.predict(PROMPT, 3, True, 0.0, 0, 1.0, 0, api_name="/generate")
