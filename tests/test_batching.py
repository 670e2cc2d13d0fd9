"""Batched decoding across sessions gives each session exactly what it gets alone.

Sessions are lined up deterministically: the test holds the model's forward lock while
every session asks for its next token, so all their requests are queued, and releasing
the lock runs them as one batch (checked with the batcher's own counters).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable

import pytest
import torch

import tokstep
from tokstep.core.model import LanguageModel
from tokstep.core.sampling import SamplingSettings
from tokstep.core.stepper import Step, TokenStepper
from tokstep.runtimes.kv_layout import DECODE_ROOM

# Prompts of different lengths, so that the batch's caches need padding.
PROMPTS = [
    "Once upon a time",
    "The cat sat on the mat and looked out of the window at the rain.",
    "Hello",
    "A long time ago, in a small town by the sea, there lived an old fisherman",
    "Tom and Sue went to the park",
]
ROUNDS = 12


def together(lm: LanguageModel, actions: list[Callable[[], Step]], prefills: int) -> list[Step]:
    """Run every action (each one step of its own session) so that their passes share one turn:
    one batched pass for the decodes, and one for the `prefills` sessions that have no KV cache
    yet (a new prompt), all read together."""
    results: list[Step | BaseException | None] = [None] * len(actions)

    def run(index: int) -> None:
        try:
            results[index] = actions[index]()
        except BaseException as error:  # noqa: BLE001 (raised below, in the test's thread)
            results[index] = error

    passes_before = lm.forward.batcher.counters.passes
    with lm.forward.batcher.forward_lock:  # the model is busy: every request queues up
        threads = [threading.Thread(target=run, args=(index,)) for index in range(len(actions))]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 10
        while lm.forward.batcher.waiting < len(actions):
            assert time.monotonic() < deadline, f"only {lm.forward.batcher.waiting} of {len(actions)} requests queued"
            time.sleep(0.001)
    for thread in threads:
        thread.join(timeout=30)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    decodes = len(actions) - prefills
    assert lm.forward.batcher.counters.passes - passes_before == min(prefills, 1) + min(decodes, 1)
    return results  # type: ignore[return-value]


def cold(sessions: list[TokenStepper]) -> int:
    """How many of `sessions` have no KV cache: their next pass reads their whole prompt."""
    return sum(not stepper.holds_cache for stepper in sessions)


def steppers(lm: LanguageModel) -> list[TokenStepper]:
    return [TokenStepper.from_text(lm, prompt) for prompt in PROMPTS]


def assert_same_step(batched: Step, alone: Step) -> None:
    assert batched.token_id == alone.token_id
    assert batched.chosen_by == alone.chosen_by
    assert batched.prob == pytest.approx(alone.prob, abs=1e-4)
    assert [c.token_id for c in batched.top] == [c.token_id for c in alone.top]
    for got, want in zip(batched.top, alone.top, strict=True):
        assert got.prob == pytest.approx(want.prob, abs=1e-4)
    assert batched.rest_prob == pytest.approx(alone.rest_prob, abs=1e-4)
    assert batched.entropy == pytest.approx(alone.entropy, abs=1e-3)


@pytest.mark.parametrize("model", ["tiny", "bundled"])
def test_batched_greedy_steps_equal_each_session_alone(model, request):
    lm = request.getfixturevalue("served_lm" if model == "tiny" else "served_bundled_lm")
    alone = []
    for stepper in steppers(lm):
        alone.append([stepper.step(5) for _ in range(ROUNDS)])
    sessions = steppers(lm)
    batched = [[] for _ in sessions]
    reused_before = lm.forward.batcher.counters.reused_batches
    for _ in range(ROUNDS):
        steps = together(lm, [lambda s=s: s.step(5) for s in sessions], cold(sessions))
        for record, step in zip(batched, steps, strict=True):
            record.append(step)
    assert lm.forward.batcher.counters.largest_batch >= len(sessions)
    # The same sessions pass after pass: every decode pass took the last pass's padded cache
    # as it was (the first one, the prompts' batch), and the results below are still exact.
    assert lm.forward.batcher.counters.reused_batches - reused_before == ROUNDS - 1
    for got, want in zip(batched, alone, strict=True):
        for batched_step, alone_step in zip(got, want, strict=True):
            assert_same_step(batched_step, alone_step)


def test_a_batch_appends_its_new_positions_in_place_until_its_room_is_full(served_lm):
    # Past the room, a pass makes new room: more rounds than two rooms' worth cross that twice.
    rounds = 2 * DECODE_ROOM + 3
    alone = []
    for stepper in steppers(served_lm):
        alone.append([stepper.step(5) for _ in range(rounds)])
    sessions = steppers(served_lm)
    storages = []  # the storage of session 0's first layer's keys after each round
    for _ in range(rounds):
        together(served_lm, [lambda s=s: s.step(5) for s in sessions], cold(sessions))
        storages.append(sessions[0]._cache.layers[0].keys.untyped_storage().data_ptr())
    # Concatenation would give every pass a new tensor; in place, a new one comes once per room
    # (the prompts' batch, the first padded decode batch, then each time the room is full).
    changes = sum(before != after for before, after in itertools.pairwise(storages))
    assert changes <= rounds // DECODE_ROOM + 1
    for got, want in zip([stepper.steps for stepper in sessions], alone, strict=True):
        for batched_step, alone_step in zip(got, want, strict=True):
            assert_same_step(batched_step, alone_step)


def test_a_sequence_stepping_alone_appends_in_place_too(served_lm):
    # (conftest gives the tiny model's small cache room, as a large model's gets.)
    rounds = 2 * DECODE_ROOM + 3
    ids = tokstep.tokenize(served_lm.tokenizer, PROMPTS[0])
    stepper = TokenStepper(served_lm, ids)
    storages = []
    for _ in range(rounds):
        stepper.step(5)
        storages.append(stepper._cache.layers[0].keys.untyped_storage().data_ptr())
    # The prompt's cache, then one tensor per room (a copy at each step without room).
    assert sum(before != after for before, after in itertools.pairwise(storages)) <= rounds // DECODE_ROOM + 1
    prompt = torch.tensor([ids])
    with torch.inference_mode():
        expected = served_lm.model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            do_sample=False,
            max_new_tokens=rounds,
            min_new_tokens=rounds,
        )[0, len(ids) :].tolist()
    assert stepper.generated_ids == expected


def test_batched_greedy_equals_generate(served_bundled_lm):
    """The key invariant holds inside a batch too: greedy stepping == generate(do_sample=False)."""
    sessions = steppers(served_bundled_lm)
    for _ in range(ROUNDS):
        together(served_bundled_lm, [lambda s=s: s.step(5) for s in sessions], cold(sessions))
    for stepper in sessions:
        prompt = torch.tensor([stepper.ids[: stepper.prompt_length]])
        with torch.inference_mode():
            expected = served_bundled_lm.model.generate(
                prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=ROUNDS
            )[0, stepper.prompt_length :].tolist()
        # generate stops early at end-of-text; stepping past it is the caller's choice.
        assert stepper.generated_ids[: len(expected)] == expected


def test_sampling_picks_undo_and_prefills_mix_in_one_batch(served_lm):
    """Each session's own choices survive batching: seeded draws, picks, undo, a new prompt."""
    sampling = SamplingSettings(temperature=0.9, top_k=50, seed=7)
    joins_at = ROUNDS // 2  # a new session joins then: its first step (a prefill) shares the turn

    def script(stepper: TokenStepper, index: int, round_: int) -> Step:
        # Session 0 samples, 1 takes the runner-up, 2 undoes every third round, 3 and 4 are greedy.
        if index == 0:
            return stepper.step(5, sampling=sampling)
        if index == 1:
            return stepper.step(5, token_id=stepper.next_top(2)[0][1].token_id)
        if index == 2 and round_ % 3 == 2:
            stepper.undo()
        return stepper.step(5)

    alone = steppers(served_lm)
    for index, stepper in enumerate(alone):
        for round_ in range(joins_at if index == 4 else 0, ROUNDS):
            script(stepper, index, round_)

    sessions = steppers(served_lm)
    reused_before = served_lm.forward.batcher.counters.reused_batches
    for round_ in range(ROUNDS):
        active = [(index, s) for index, s in enumerate(sessions) if index < 4 or round_ >= joins_at]
        actions = [lambda s=s, i=i, r=round_: script(s, i, r) for i, s in active]
        together(served_lm, actions, cold([s for _, s in active]))
    # An undo (a cropped cache) and a new session each make the next pass pad the caches
    # afresh; the rounds between them reuse the last pass's.
    assert 0 < served_lm.forward.batcher.counters.reused_batches - reused_before < ROUNDS - 1
    assert [stepper.ids for stepper in sessions] == [stepper.ids for stepper in alone]
    for batched, solo in zip(sessions, alone, strict=True):
        assert [step.chosen_by for step in batched.steps] == [step.chosen_by for step in solo.steps]
        for batched_step, solo_step in zip(batched.steps, solo.steps, strict=True):
            assert_same_step(batched_step, solo_step)


def test_an_error_in_a_batched_pass_reaches_every_session_and_the_model_keeps_serving(served_lm):
    sessions = steppers(served_lm)[:3]
    for stepper in sessions:
        stepper.step(5)
    # A cache that does not fit the model (twice the head width) makes the batched pass fail.
    broken = sessions[1]._cache.layers[0]
    broken.keys = torch.cat([broken.keys, broken.keys], dim=-1)
    errors: list[BaseException] = []

    def step_or_record(stepper: TokenStepper) -> Step | None:
        try:
            return stepper.step(5)
        except RuntimeError as error:
            errors.append(error)
            return None

    together(served_lm, [lambda s=s: step_or_record(s) for s in sessions], 0)
    assert len(errors) == len(sessions)  # every session in the pass hears of it; none hangs
    for stepper in (sessions[0], sessions[2]):
        stepper.release()  # their caches are intact, but read everything again to be sure
    for index in (0, 2):
        sessions[index].step(5)
        solo = steppers(served_lm)[index]
        solo.step(5), solo.step(5)
        assert sessions[index].ids == solo.ids


def test_prompts_past_the_token_budget_are_read_in_several_passes(served_lm, monkeypatch):
    """Prefills share a pass only up to MAX_PREFILL_TOKENS padded positions; the rest take more."""
    from tokstep.core.forward import PendingPass
    from tokstep.runtimes import kv_layout

    sessions = steppers(served_lm)
    lengths = [stepper.prompt_length for stepper in sessions]
    # Room for two of the longest prompts per pass, no more.
    monkeypatch.setattr(kv_layout, "MAX_PREFILL_TOKENS", 2 * max(lengths))
    requests = [PendingPass([0] * n, None, 0) for n in lengths]
    expected_passes = len(kv_layout.chunks(requests, 2 * max(lengths)))
    assert 1 < expected_passes < len(sessions)
    passes_before = served_lm.forward.batcher.counters.passes
    alone = [stepper.step(5) for stepper in steppers(served_lm)]
    passes_alone = served_lm.forward.batcher.counters.passes - passes_before
    results: list[Step] = [None] * len(sessions)  # type: ignore[list-item]
    with served_lm.forward.batcher.forward_lock:
        threads = [
            threading.Thread(target=lambda i=i: results.__setitem__(i, sessions[i].step(5)))
            for i in range(len(sessions))
        ]
        for thread in threads:
            thread.start()
        while served_lm.forward.batcher.waiting < len(sessions):
            time.sleep(0.001)
        passes_before = served_lm.forward.batcher.counters.passes
    for thread in threads:
        thread.join(timeout=30)
    assert passes_alone == len(sessions)
    assert served_lm.forward.batcher.counters.passes - passes_before == expected_passes
    for got, want in zip(results, alone, strict=True):
        assert_same_step(got, want)


def test_identical_prompts_in_one_batch_are_read_once(served_lm):
    """A class that presses Auto-run on a fresh page sends the same prompt many times: the prefill
    pass reads each distinct prompt once, and every session still gets exactly its solo steps,
    through decoding, sampling and undo (their caches share the prompt's keys and values)."""
    prompts = [PROMPTS[0]] * 3 + [PROMPTS[1]] + [PROMPTS[0]]
    alone = []
    for index, prompt in enumerate(prompts):
        stepper = TokenStepper.from_text(served_lm, prompt)
        sampling = SamplingSettings(temperature=0.8, seed=index) if index % 2 else None
        steps = [stepper.step(5, sampling=sampling) for _ in range(4)]
        stepper.undo()
        alone.append([*steps, stepper.step(5, sampling=sampling)])

    rows_read: list[int] = []
    hook = served_lm.model.register_forward_pre_hook(
        lambda module, args, kwargs: rows_read.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    try:
        sessions = [TokenStepper.from_text(served_lm, prompt) for prompt in prompts]
        settings = [SamplingSettings(temperature=0.8, seed=i) if i % 2 else None for i in range(len(prompts))]
        batched: list[list[Step]] = [[] for _ in sessions]
        for round_ in range(4):
            actions = [lambda s=s, o=o: s.step(5, sampling=o) for s, o in zip(sessions, settings, strict=True)]
            steps = together(served_lm, actions, cold(sessions))
            if round_ == 0:
                assert rows_read == [2]  # the prompts' pass: two distinct prompts, five sessions
            for record, step in zip(batched, steps, strict=True):
                record.append(step)
    finally:
        hook.remove()
    for stepper, record, options in zip(sessions, batched, settings, strict=True):
        stepper.undo()
        record.append(stepper.step(5, sampling=options))
    for got, want in zip(batched, alone, strict=True):
        for batched_step, alone_step in zip(got, want, strict=True):
            assert_same_step(batched_step, alone_step)
