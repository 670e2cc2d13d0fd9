"""tokstep on a real vLLM server (tests/engine_support.py starts one for the session): the same
tokens, probabilities, ranks, undo, picks and run files as in process, the page in Chromium, and
faults injected between the page and the real engine."""

from __future__ import annotations

import math
import time

import pytest
import torch
from conftest import serving, token_labels, wait_for_count
from engine_support import EngineDouble, vllm_url  # noqa: F401 (the session's vLLM server)
from gradio_client import Client
from gradio_client.exceptions import AppError

import tokstep
from tokstep.core.run_files import dumps_run, export_run, parse_run, restore_run
from tokstep.core.sampling import SamplingSettings
from tokstep.core.stepper import TokenStepper
from tokstep.runtimes.engine import EngineRuntime, entropy_from_top
from tokstep.web.api import EngineAppError
from tokstep.web.page import create_demo

pytestmark = [
    pytest.mark.engine,
    pytest.mark.slow,
    pytest.mark.skipif("tinystories" not in tokstep.bundled_models(), reason="needs the bundled model"),
]

PROMPTS = ("Once upon a time", "The little dog was sad because", "Lily and Tom went to the park. They")
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def engine(vllm_url) -> EngineRuntime:  # noqa: F811
    runtime = EngineRuntime(vllm_url, error_type=EngineAppError)
    yield runtime
    runtime.close()


@pytest.fixture(scope="module")
def on_engine(engine) -> tokstep.LanguageModel:
    return engine.load("tinystories")


def close_tops(a: TokenStepper | list, b: TokenStepper | list) -> float:
    """The largest difference between two top-k lists' probabilities, token by token where both
    have a token and rank by rank (two near-tied tokens may come in either order)."""
    by_id = {c.token_id: c.prob for c in a}
    worst = max(abs(by_id[c.token_id] - c.prob) for c in b if c.token_id in by_id)
    return max(worst, max(abs(x.prob - y.prob) for x, y in zip(a, b, strict=True)))


def test_greedy_through_the_engine_is_in_process_greedy_token_for_token(on_engine, bundled_lm, vllm_url):  # noqa: F811
    loaded = tokstep.load("tinystories", engine_url=vllm_url)  # as a notebook would
    assert [s.token_id for s in tokstep.generate_steps(loaded, PROMPTS[0], 8)] == [
        s.token_id for s in tokstep.generate_steps(bundled_lm, PROMPTS[0], 8)
    ]
    for prompt in PROMPTS:
        here = [s.token_id for s in tokstep.generate_steps(bundled_lm, prompt, max_new_tokens=64)]
        there = [s.token_id for s in tokstep.generate_steps(on_engine, prompt, max_new_tokens=64)]
        assert there == here, prompt
    ids = tokstep.tokenize(bundled_lm.tokenizer, PROMPTS[0])
    generated = bundled_lm.model.generate(torch.tensor([ids]), max_new_tokens=64, do_sample=False, min_new_tokens=64)
    engine_ids = [s.token_id for s in tokstep.generate_steps(on_engine, ids, max_new_tokens=64)]
    assert engine_ids == generated[0, len(ids) :].tolist()


def test_the_engine_shows_full_vocabulary_probabilities_and_labels_its_entropy_an_estimate(on_engine, bundled_lm):
    for prompt in PROMPTS:
        here = list(tokstep.generate_steps(bundled_lm, prompt, max_new_tokens=64, top_k=20))
        there = list(tokstep.generate_steps(on_engine, prompt, max_new_tokens=64, top_k=20))
        for a, b in zip(here, there, strict=True):
            assert close_tops(a.top, b.top) < TOLERANCE
            assert abs(a.prob - b.prob) < TOLERANCE and a.rank == b.rank == 1
            assert abs(a.rest_prob - b.rest_prob) < TOLERANCE  # exact: 1 - the exact top-k
            assert b.estimates == {"entropy"} and a.estimates == frozenset()
            _, low, high = entropy_from_top([c.prob for c in b.top], on_engine.vocab_size)
            assert low - 1e-3 <= a.entropy <= high + 1e-3  # the exact entropy lies within the estimate's bounds


def test_undo_and_picks_inside_and_outside_the_top_k_match_in_process(on_engine, bundled_lm):
    here, there = TokenStepper.from_text(bundled_lm, PROMPTS[0]), TokenStepper.from_text(on_engine, PROMPTS[0])
    far = 1500  # a token far outside the engine's top 20
    for stepper in (here, there):
        stepper.step()
        stepper.step(token_id=stepper.next_top(5)[0][3].token_id)  # a pick inside the top-k
        stepper.step(token_id=far)  # and one outside it
        stepper.step()
    assert here.ids == there.ids
    for a, b in zip(here.steps, there.steps, strict=True):
        assert a.rank == b.rank and abs(a.prob - b.prob) < TOLERANCE
    assert there.steps[2].rank > 20 and there.steps[2].chosen_by == "user"
    for _ in range(3):
        assert here.undo().token_id == there.undo().token_id
        assert here.ids == there.ids
        assert close_tops(here.next_top(10)[0], there.next_top(10)[0]) < TOLERANCE
    scores_here, scores_there = here.prompt_scores(), there.prompt_scores()
    assert [s.rank for s in scores_here] == [s.rank for s in scores_there]
    assert all(abs(a.prob - b.prob) < TOLERANCE for a, b in zip(scores_here[1:], scores_there[1:], strict=True))


def test_a_run_file_moves_between_the_engine_and_in_process(on_engine, bundled_lm):
    settings = SamplingSettings(temperature=0.9, top_k=10, seed=5)
    made = TokenStepper.from_text(on_engine, PROMPTS[1])
    for _ in range(4):
        made.step()
    made.step(token_id=1500)
    for _ in range(4):
        made.step(sampling=settings)
    run = parse_run(dumps_run(export_run(made, top_k=5, sampling=settings)))
    restored = restore_run(bundled_lm, run)  # in process
    assert restored.stepper.ids == made.ids and not restored.warnings
    for a, b in zip(made.steps, restored.stepper.steps, strict=True):
        assert a.chosen_by == b.chosen_by and a.rank == b.rank and abs(a.prob - b.prob) < TOLERANCE
    back = restore_run(on_engine, parse_run(dumps_run(export_run(restored.stepper, top_k=5, sampling=settings))))
    assert back.stepper.ids == made.ids and not back.warnings
    assert [s.chosen_by for s in back.stepper.steps] == [s.chosen_by for s in made.steps]


def test_seeded_sampling_through_the_engine_says_whose_sampler_and_repeats(on_engine, bundled_lm):
    settings = SamplingSettings(temperature=0.8, top_k=10, seed=11)
    first = [s.token_id for s in tokstep.generate_steps(on_engine, PROMPTS[0], 24, sampling=settings)]
    again = list(tokstep.generate_steps(on_engine, PROMPTS[0], 24, sampling=settings))
    assert [s.token_id for s in again] == first
    assert {s.sampler for s in again} == {"engine"} and {s.chosen_by for s in again} == {"sampled"}
    assert len(set(first)) > 5  # it did sample
    # Its sampler's numbers (top_k 10 of the 20 returned: exact) are tokstep's own for the same tokens.
    here = TokenStepper.from_text(bundled_lm, PROMPTS[0])
    for step in again:
        mine = here.step(5, token_id=step.token_id, sampling=settings)
        assert "sampling" not in step.estimates and mine.sampler == "tokstep"
        assert abs(mine.sampling_prob - step.sampling_prob) < TOLERANCE
        assert mine.sampling_kept == step.sampling_kept
    stepper = TokenStepper.from_text(on_engine, PROMPTS[0])
    drawn = [stepper.step(sampling=settings).token_id for _ in range(3)]
    stepper.undo()
    assert stepper.step(sampling=settings).token_id == drawn[-1]  # a draw repeats after an undo


def test_generate_over_the_engine_reports_its_estimates(engine, on_engine, bundled_lm):
    with serving(create_demo(on_engine, runtime=engine)) as url:
        client = Client(url, verbose=False)
        updates = list(client.submit(PROMPTS[0], 12, api_name="/generate"))
        # The "Why this token?" views need the model in this process: refused before the first token.
        for view in ("layers", "attention"):
            with pytest.raises(AppError, match=f"in a serving engine.*Call again without {view}"):
                client.predict(PROMPTS[0], 3, **{view: True}, api_name="/generate")
    here = [s.token_id for s in tokstep.generate_steps(bundled_lm, PROMPTS[0], 12)]
    assert [u["token_id"] for u in updates] == here
    assert all(u["estimates"] == ["entropy"] for u in updates)


def test_the_page_steps_through_the_engine_in_chromium(engine, on_engine, bundled_lm, tab):
    greedy = [s.token_id for s in tokstep.generate_steps(bundled_lm, PROMPTS[0], max_new_tokens=10)]
    n_prompt = len(tokstep.tokenize(bundled_lm.tokenizer, PROMPTS[0]))
    with serving(create_demo(on_engine, runtime=engine)) as url:
        tab.goto(url)
        tab.wait_for_selector("#tokens .token")
        wait_for_count(tab, n_prompt)
        tab.click("#step")
        labels = wait_for_count(tab, n_prompt + 1)
        assert labels[-1] == f"+{greedy[0]} · #1"
        status = tab.locator("#status").inner_text()
        assert "entropy ≈" in status and "estimated from the serving engine's top tokens" in status
        tab.locator("#autorun-tokens input[type=number]").fill("3")
        tab.locator("#speed input[type=number]").fill("20")
        tab.click("#autorun")
        labels = wait_for_count(tab, n_prompt + 4)
        assert labels[n_prompt:] == [f"+{i} · #1" for i in greedy[:4]]
        tab.click("#undo")
        wait_for_count(tab, n_prompt + 3)
        # A pick: the third candidate of the top-k, clicked.
        third = tab.locator("#topk dt").nth(2).inner_text()  # e.g. "␣big (406)"
        third_id = third.rsplit("(", 1)[1].rstrip(")")
        tab.locator("#topk button").nth(2).click()
        labels = wait_for_count(tab, n_prompt + 4)
        assert labels[-1] == f"+{third_id} · #3 picked"
        assert "picked by you" in tab.inner_text("#status")


def test_a_fault_between_the_page_and_the_engine_keeps_the_tokens_and_the_next_step_retries(vllm_url, tab):  # noqa: F811
    proxy = EngineDouble(upstream=vllm_url)
    runtime = EngineRuntime(proxy.url, timeout_s=2, error_type=EngineAppError)
    try:
        lm = runtime.load("tinystories")
        n_prompt = len(tokstep.tokenize(lm.tokenizer, PROMPTS[0]))
        with serving(create_demo(lm, runtime=runtime)) as url:
            tab.goto(url)
            tab.wait_for_selector("#tokens .token")
            wait_for_count(tab, n_prompt)
            tab.click("#step")
            wait_for_count(tab, n_prompt + 1)
            for mode, words in (("close", "closed the connection"), ("hang", "did not answer within 2 s")):
                proxy.mode = mode
                before = token_labels(tab)
                tab.click("#step")  # appends from the distribution it had; the next one fails
                tab.wait_for_function(
                    "w => document.querySelector('#status').innerText.includes(w)", arg=words, timeout=15000
                )
                kept = token_labels(tab)
                assert kept[: len(before)] == before and len(kept) == len(before) + 1
                assert "Serving engine" in tab.locator("#status").inner_text()
                tab.click("#step")  # the engine is still failing: a pop-up says so, nothing changes
                toast = tab.locator(".toast-body", has_text="The serving engine at").first
                toast.wait_for(timeout=15000)
                assert words in toast.inner_text() and "Your tokens are kept" in toast.inner_text()
                assert token_labels(tab) == kept
                toast.locator(".toast-close").click()
                proxy.mode = "ok"
                tab.click("#step")  # back: the next Step retries and goes on
                wait_for_count(tab, len(kept) + 1)
            proxy.stop()  # the engine goes away: nothing listens there
            client = Client(url, verbose=False)
            started = time.monotonic()
            job = client.submit(PROMPTS[0], 5, api_name="/generate")
            with pytest.raises(Exception, match="cannot be reached"):
                job.result()
            assert time.monotonic() - started < 30
    finally:
        proxy.close()
        runtime.close()


def test_the_engine_answers_what_was_asked_as_ids(vllm_url):  # noqa: F811
    """The wire format this runtime relies on, straight from vLLM: ids in, ids and ranks out."""
    import httpx

    answer = httpx.post(
        f"{vllm_url}/completions",
        json={
            "model": "tinystories", "prompt": [409, 434, 259], "max_tokens": 1, "temperature": 0, "logprobs": 3,
            "prompt_logprobs": 0, "return_tokens_as_token_ids": True,
        },
        timeout=30,
    ).json()  # fmt: skip
    choice = answer["choices"][0]
    assert choice["logprobs"]["tokens"][0].startswith("token_id:")
    top = choice["logprobs"]["top_logprobs"][0]
    assert len(top) == 3 and all(key.startswith("token_id:") for key in top)
    assert 0 < sum(math.exp(v) for v in top.values()) <= 1 + 1e-6  # full-vocabulary probabilities
    assert choice["prompt_logprobs"][0] is None and choice["prompt_logprobs"][1]["434"]["rank"] >= 1
