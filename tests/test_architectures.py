"""The stepping engine on tiny random models of many architectures (tokstep.testing_models).

For each architecture, through both places a pass can run (`lm.forward` as `tokstep.from_objects`
gives it, a direct call; and the batched in-process runtime a server uses): greedy steps are
`model.generate`'s tokens; the probabilities shown are a fresh uncached forward's softmax over the
whole vocabulary; four sequences stepping at once (batched wherever their caches can be) get what
each gets alone; undo then step, also back past the sliding window, is the straight path; a user's
pick and seeded sampling work. Packed weights (a runtime's `pack_weights`) and a model saved and
loaded back by `tokstep.load` give the same tokens. Expected values always come from the model
itself, never from stored ids.

Where a cache cannot do something the stepper falls back to what is correct: a sliding-window or
conv layer that cannot be cropped is read again on undo (TokenStepper._crop_cache), a model that
returns no cache (RecurrentGemma keeps its state inside itself) reads every id at each pass, and
caches that cannot be padded step alone in the batched runtime.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import cache
from pathlib import Path

import pytest
import torch

import tokstep
from tokstep.runtimes.in_process import InProcessRuntime
from tokstep.testing_models import ARCHITECTURES, SLIDING_WINDOW, tiny_causal_lm, tiny_model, tokenizer

N_NEW = 24  # steps per run: with the prompt, well past SLIDING_WINDOW positions
PROMPT = "Once upon a time there was a little"
# Of different lengths (1 to 11 tokens), so that a batch's rows need padding.
PROMPTS = (PROMPT, "Hello", "The quick brown fox jumps over the lazy dog.", "In a hole in the ground there lived")
PROB_ATOL = 1e-5  # the same arithmetic in another order (cached or not, batched or not) in fp32
BATCH_ATOL = 1e-4  # a batched pass: padded rows, another matmul shape
# Mamba and Mamba-2 read a prompt with a parallel (chunked) scan and a cached token with the
# recurrent step: transformers' own cached path drifts from its uncached one by up to ~2e-5 here
# (tokstep's probabilities equal transformers' cached ones exactly).
SCAN_ATOL = 5e-5
SCAN_MODEL_TYPES = frozenset({"mamba", "mamba2"})
CHECKED_STEPS = (0, 1, SLIDING_WINDOW + 3, N_NEW - 1)  # where whole distributions are compared
KINDS = ("direct", "batched")  # lm.forward: tokstep.from_objects' direct call, or the batched runtime

# One runtime for the module, as an app has one: one lock, one warm set, a batcher per model.
RUNTIME = InProcessRuntime()


def _cases(kinds: tuple[str, ...] = KINDS) -> list:
    """(arch, kind) parameters: every architecture on every kind of forward."""
    return [pytest.param(arch, kind, id=f"{arch}-{kind}") for arch in ARCHITECTURES for kind in kinds]


@cache
def _served(arch: str) -> tokstep.LanguageModel:
    """The tiny model served by RUNTIME (once per model: steps batch only through the same batcher)."""
    return RUNTIME.serve(tiny_causal_lm(arch))


def _lm(arch: str, kind: str) -> tokstep.LanguageModel:
    return tiny_causal_lm(arch) if kind == "direct" else _served(arch)


def _prompt_ids(text: str = PROMPT) -> list[int]:
    return tokenizer()(text)["input_ids"]


def _reference_probs(lm: tokstep.LanguageModel, ids: list[int]) -> torch.Tensor:
    """Softmax over the whole vocabulary of an uncached forward over all of `ids`, its last row: (vocab,)."""
    with RUNTIME.forward_lock, torch.inference_mode():  # no pass of the runtime runs meanwhile
        logits = lm.model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1]  # (vocab,)
    return torch.softmax(logits.float(), dim=-1)


def _generate(lm: tokstep.LanguageModel, ids: list[int], n_new: int = N_NEW) -> list[int]:
    """`model.generate`'s greedy new tokens after `ids`, stopping on the same eos ids as tokstep."""
    eos = sorted(lm.eos_token_ids)
    with RUNTIME.forward_lock, torch.inference_mode():
        output = lm.model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones((1, len(ids)), dtype=torch.long),
            do_sample=False,
            max_new_tokens=n_new,
            eos_token_id=eos,
            pad_token_id=eos[0],
        )
    return output[0, len(ids) :].tolist()


def _atol(lm: tokstep.LanguageModel) -> float:
    """How far two correct paths' probabilities may be apart for this model (see SCAN_ATOL)."""
    return SCAN_ATOL if lm.model.config.model_type in SCAN_MODEL_TYPES else PROB_ATOL


def _assert_steps_close(steps: list[tokstep.Step], expected: list[tokstep.Step], atol: float) -> None:
    """Same tokens at the same positions, same top tokens, their probabilities within `atol`."""
    assert [s.token_id for s in steps] == [s.token_id for s in expected]
    for step, other in zip(steps, expected, strict=True):
        assert step.position == other.position
        assert [c.token_id for c in step.top] == [c.token_id for c in other.top]
        assert step.prob == pytest.approx(other.prob, abs=atol)
        assert [c.prob for c in step.top] == pytest.approx([c.prob for c in other.top], abs=atol)


def _assert_probs_are_the_models(stepper: tokstep.TokenStepper, atol: float | None = None) -> None:
    """The stepper's next-token distribution is an uncached forward's over all its ids."""
    atol = max(atol or 0.0, _atol(stepper.lm))
    shown, expected = stepper.next_token_probs(), _reference_probs(stepper.lm, stepper.ids)
    assert shown.shape == expected.shape == (stepper.lm.vocab_size,)
    assert torch.allclose(shown, expected, rtol=0, atol=atol), f"max diff {float((shown - expected).abs().max())}"


@pytest.mark.parametrize(("arch", "kind"), _cases())
def test_greedy_steps_equal_generate(arch: str, kind: str) -> None:
    lm = _lm(arch, kind)
    ids = _prompt_ids()
    steps = list(tokstep.generate_steps(lm, ids, max_new_tokens=N_NEW))
    expected = _generate(lm, ids)
    assert [s.token_id for s in steps] == expected
    # Long enough to pass the window, unless the model wrote its end of text first.
    assert len(expected) == N_NEW or expected[-1] in lm.eos_token_ids
    assert all(s.chosen_by == "greedy" and s.rank == 1 for s in steps)


@pytest.mark.parametrize(("arch", "kind"), _cases())
def test_probs_equal_uncached_forward(arch: str, kind: str) -> None:
    lm = _lm(arch, kind)
    stepper = tokstep.TokenStepper(lm, _prompt_ids())
    for index in range(N_NEW):
        if index not in CHECKED_STEPS:
            stepper.step()
            continue
        expected = _reference_probs(lm, stepper.ids)
        _assert_probs_are_the_models(stepper)
        top, rest = stepper.next_top(5)
        best = torch.topk(expected, 5)
        assert [c.token_id for c in top] == best.indices.tolist()
        assert rest == pytest.approx(1.0 - float(best.values.sum()), abs=_atol(lm))
        step = stepper.step()
        assert step.token_id == int(torch.argmax(expected))
        assert step.prob == pytest.approx(float(expected[step.token_id]), abs=_atol(lm))


def _in_threads(work: Callable[[int], list[tokstep.Step]], count: int) -> list[list[tokstep.Step]]:
    """`work(i)` for i in range(count), each in a thread of its own, started together; the results in order."""
    results: list[list[tokstep.Step] | None] = [None] * count
    errors: list[BaseException] = []
    start = threading.Barrier(count)

    def run(index: int) -> None:
        try:
            start.wait()
            results[index] = work(index)
        except BaseException as error:  # noqa: BLE001 (raised again in the test's thread)
            errors.append(error)

    threads = [threading.Thread(target=run, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a stepping thread hung"
    if errors:
        raise errors[0]
    return results  # type: ignore[return-value]


@pytest.mark.parametrize(("arch", "kind"), _cases(kinds=("batched",)))
def test_four_sequences_at_once_equal_each_alone(arch: str, kind: str) -> None:
    """Through the batched runtime, where concurrent steps share passes (when their caches can be
    padded: plain DynamicLayers) or take turns. The direct call promises no sharing between threads."""
    lm = _lm(arch, kind)
    prompts = [_prompt_ids(text) for text in PROMPTS]
    alone = []
    for ids in prompts:
        stepper = tokstep.TokenStepper(lm, ids)
        alone.append([stepper.step() for _ in range(N_NEW)])
        _assert_probs_are_the_models(stepper)  # alone, each is right (not merely as wrong as together)

    def by_hand(index: int) -> list[tokstep.Step]:
        stepper = tokstep.TokenStepper(lm, prompts[index])
        steps = [stepper.step() for _ in range(N_NEW)]
        if index == 1:
            _assert_probs_are_the_models(stepper, atol=BATCH_ATOL)
        return steps

    def one_of_four(index: int) -> list[tokstep.Step]:
        # Two sequences step through generate_steps (which queues each next pass ahead), two by hand.
        if index % 2 == 0:
            return list(tokstep.generate_steps(lm, prompts[index], max_new_tokens=N_NEW))
        return by_hand(index)

    together = _in_threads(one_of_four, len(prompts))
    for steps, expected in zip(together, alone, strict=True):
        _assert_steps_close(steps, expected, atol=BATCH_ATOL)


@pytest.mark.parametrize(("arch", "kind"), _cases())
def test_undo_then_step_equals_straight_path(arch: str, kind: str) -> None:
    lm = _lm(arch, kind)
    ids = _prompt_ids()
    straight = tokstep.TokenStepper(lm, ids)
    expected = [straight.step() for _ in range(N_NEW)]

    stepper = tokstep.TokenStepper(lm, ids)
    for _ in range(N_NEW):
        stepper.step()
    # Back one token, then back past the sliding window, then back to the first generated token.
    for back in (1, SLIDING_WINDOW + 4, N_NEW - 1):
        undone = [stepper.undo() for _ in range(back)]
        assert [s.token_id for s in undone] == [s.token_id for s in reversed(expected[N_NEW - back :])]
        assert stepper.ids == ids + [s.token_id for s in expected[: N_NEW - back]]
        _assert_probs_are_the_models(stepper)
        redone = [stepper.step() for _ in range(back)]
        _assert_steps_close(redone, expected[N_NEW - back :], atol=_atol(lm))
    assert stepper.ids == straight.ids


@pytest.mark.parametrize(("arch", "kind"), _cases())
def test_pick_and_seeded_sampling(arch: str, kind: str) -> None:
    lm = _lm(arch, kind)
    ids = _prompt_ids()
    stepper = tokstep.TokenStepper(lm, ids)
    stepper.step()
    pick = stepper.next_top(3)[0][2].token_id  # the third most likely: not the greedy token
    picked = stepper.step(token_id=pick)
    assert (picked.token_id, picked.chosen_by, picked.rank) == (pick, "user", 3)
    # The picked token is read like any other: the next distribution is the model's after it.
    _assert_probs_are_the_models(stepper)
    assert stepper.step().token_id == int(torch.argmax(_reference_probs(lm, stepper.ids[:-1])))

    sampling = tokstep.SamplingSettings(temperature=0.8, seed=3)
    runs, steppers = [], []
    for _ in range(2):
        fresh = tokstep.TokenStepper(lm, ids)
        runs.append([fresh.step(sampling=sampling) for _ in range(N_NEW)])
        steppers.append(fresh)
    assert [s.token_id for s in runs[0]] == [s.token_id for s in runs[1]]
    assert all(s.chosen_by == "sampled" and s.sampling == sampling for s in runs[0])
    assert all(s.sampling_prob is not None and s.sampling_prob > 0 for s in runs[0])
    _assert_steps_close(runs[0], runs[1], atol=_atol(lm))
    # The sampled sequence is read as it is: its last distribution is the model's after it.
    _assert_probs_are_the_models(steppers[0])


def _packed(arch: str) -> tokstep.LanguageModel:
    """A second tiny `arch` model (the same weights), served by a runtime that packs its weights:
    the output layer (64 x 50,257) is over the packing threshold. Not kept: one test uses it."""
    lm = tokstep.from_objects(f"tiny-{arch}-packed", tiny_model(arch), tokenizer())
    return InProcessRuntime(pack_weights=True).serve(lm)


@pytest.mark.parametrize(("arch", "kind"), _cases(kinds=("batched",)))
def test_packed_weights_greedy_equal_generate(arch: str, kind: str) -> None:
    packed = _packed(arch)
    assert type(packed.model.get_output_embeddings()).__name__ == "PackedLinear"
    ids = _prompt_ids()
    stepper = tokstep.TokenStepper(packed, ids)
    steps = [stepper.step() for _ in range(N_NEW)]
    assert [s.token_id for s in steps] == _generate(_lm(arch, kind), ids)  # the unpacked twin's
    _assert_probs_are_the_models(stepper)


def _loaded_cases() -> list:
    """(arch, pack_weights) for a few architectures, the recurrent ones among them."""
    return [
        pytest.param(arch, pack, id=f"{arch}-{'packed' if pack else 'unpacked'}")
        for arch in ("gpt2", "llama", "mamba", "mamba2", "jamba")
        for pack in (False, True)
    ]


@pytest.mark.parametrize(("arch", "pack_weights"), _loaded_cases())
def test_saved_and_loaded(arch: str, pack_weights: bool, tmp_path: Path) -> None:
    """Saved with save_pretrained and loaded by `tokstep.load(folder, device_map="cpu")`, as a user
    loads a local model, then served as an app serves it: greedy steps are the in-memory model's
    `generate` tokens."""
    lm = tiny_causal_lm(arch)
    lm.model.save_pretrained(tmp_path)
    lm.tokenizer.save_pretrained(tmp_path)
    loaded = InProcessRuntime(pack_weights=pack_weights).serve(tokstep.load(str(tmp_path), device_map="cpu"))
    assert (type(loaded.model.get_output_embeddings()).__name__ == "PackedLinear") == pack_weights
    ids = _prompt_ids()
    steps = list(tokstep.generate_steps(loaded, ids, max_new_tokens=N_NEW))
    assert [s.token_id for s in steps] == _generate(lm, ids)
