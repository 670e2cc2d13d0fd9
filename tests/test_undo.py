"""Undo: taking back generated tokens puts the stepper exactly where it was, through a
cropped KV cache, and stepping again writes the same tokens."""

from __future__ import annotations

import warnings

import pytest
import torch

import tokstep
from tokstep.core.sampling import SamplingSettings
from tokstep.core.stepper import TokenStepper, UndoError

PROMPT = "Once upon a time, generative models"
SAMPLING = SamplingSettings(temperature=1.5, top_p=0.95, seed=21)


def user_choice(stepper: TokenStepper) -> int:
    """A token the user might click: the third most likely, so not the greedy one."""
    return stepper.next_top(3)[0][2].token_id


# Five steps mixing the three ways a token is chosen.
CHOICES = ["greedy", "user", "sampled", "greedy", "sampled"]


def do_step(stepper: TokenStepper, how: str) -> tokstep.Step:
    if how == "user":
        return stepper.step(token_id=user_choice(stepper))
    return stepper.step(sampling=SAMPLING if how == "sampled" else None)


def assert_same_state(stepper: TokenStepper, fresh: TokenStepper, k: int = 10) -> None:
    assert stepper.ids == fresh.ids
    assert stepper.generated_ids == fresh.generated_ids
    assert stepper.steps == fresh.steps  # Step equality leaves out the timing
    top, rest = stepper.next_top(k)
    fresh_top, fresh_rest = fresh.next_top(k)
    assert [c.token_id for c in top] == [c.token_id for c in fresh_top]
    assert [c.prob for c in top] == pytest.approx([c.prob for c in fresh_top], abs=1e-6)
    assert rest == pytest.approx(fresh_rest, abs=1e-6)
    assert torch.allclose(stepper.next_token_probs(), fresh.next_token_probs(), rtol=0, atol=1e-6)


def count_fed_tokens(lm):
    """A list that collects the number of tokens each forward pass reads."""
    fed: list[int] = []
    hook = lm.model.transformer.wte.register_forward_hook(lambda _m, args, _out: fed.append(args[0].shape[1]))
    return fed, hook


def test_five_steps_then_three_undos_equal_two_steps(tiny_lm):
    stepper = TokenStepper.from_text(tiny_lm, PROMPT)
    steps = [do_step(stepper, how) for how in CHOICES]
    assert [s.chosen_by for s in steps] == CHOICES
    assert stepper.steps == steps

    undone = [stepper.undo() for _ in range(3)]
    assert undone == steps[:1:-1], "undo returns the removed Steps, newest first"

    fresh = TokenStepper.from_text(tiny_lm, PROMPT)
    for how in CHOICES[:2]:
        do_step(fresh, how)
    assert_same_state(stepper, fresh)


@pytest.mark.parametrize("look_before_undo", [False, True])
def test_undo_back_to_the_prompt_and_no_further(tiny_lm, look_before_undo):
    stepper = TokenStepper.from_text(tiny_lm, PROMPT)
    for how in CHOICES:
        do_step(stepper, how)
    for _ in CHOICES:
        if look_before_undo:
            stepper.next_top(5)  # the newest token is then in the KV cache too
        stepper.undo()
    assert not stepper.can_undo
    with pytest.raises(UndoError, match="Nothing to undo"):
        stepper.undo()
    assert isinstance(UndoError("x"), ValueError)
    assert stepper.text() == PROMPT
    assert_same_state(stepper, TokenStepper.from_text(tiny_lm, PROMPT))


def test_undo_on_a_fresh_stepper_is_refused(tiny_lm):
    stepper = TokenStepper.from_text(tiny_lm, PROMPT)
    assert not stepper.can_undo
    with pytest.raises(UndoError, match="only the prompt is left"):
        stepper.undo()
    assert stepper.step().position == len(stepper.ids) - 1, "the refusal changed nothing"


def test_a_one_token_prompt_undoes_to_an_empty_cache(tiny_lm):
    stepper = TokenStepper(tiny_lm, [464])
    for how in CHOICES:
        do_step(stepper, how)
    for _ in CHOICES:
        stepper.undo()
    assert_same_state(stepper, TokenStepper(tiny_lm, [464]))


def test_stepping_again_after_undo_writes_the_same_tokens(tiny_lm):
    stepper = TokenStepper.from_text(tiny_lm, PROMPT)
    steps = [do_step(stepper, how) for how in CHOICES]
    for _ in range(4):
        stepper.undo()
    again = [do_step(stepper, how) for how in CHOICES[1:]]
    assert [s.token_id for s in again] == [s.token_id for s in steps[1:]]
    assert [s.chosen_by for s in again] == CHOICES[1:]
    for new, old in zip(again, steps[1:], strict=True):
        assert [c.token_id for c in new.top] == [c.token_id for c in old.top]
        assert new.prob == pytest.approx(old.prob, abs=1e-6)
        assert new.entropy == pytest.approx(old.entropy, abs=1e-5)
    # Sampled tokens come back too: the draw depends only on (seed, position).
    assert stepper.ids == tokstep.tokenize(tiny_lm.tokenizer, PROMPT) + [s.token_id for s in steps]


def test_undo_then_a_different_choice(tiny_lm):
    stepper = TokenStepper.from_text(tiny_lm, PROMPT)
    first = stepper.step()
    stepper.undo()
    other = stepper.step(token_id=stepper.next_top(2)[0][1].token_id)
    assert other.token_id != first.token_id
    assert other.position == first.position
    # The same distribution, a different choice. (Not bit for bit: the prompt's last token
    # is now read on its own over the cropped cache, not in one pass with the prompt.)
    assert [c.token_id for c in other.top] == [c.token_id for c in first.top]
    assert [c.prob for c in other.top] == pytest.approx([c.prob for c in first.top], abs=1e-6)
    assert stepper.steps == [other]


def test_undo_reuses_the_kv_cache(tiny_lm):
    stepper = TokenStepper.from_text(tiny_lm, PROMPT)
    for how in CHOICES:
        do_step(stepper, how)
    fed, hook = count_fed_tokens(tiny_lm)
    try:
        stepper.undo()
        stepper.undo()
        stepper.next_top(5)
        stepper.undo()
        stepper.step()
    finally:
        hook.remove()
    # Each recomputed distribution is one token's pass over the cropped cache.
    assert fed == [1, 1]


def test_undo_without_a_croppable_cache_reads_the_sequence_again(tiny_lm, monkeypatch):
    stepper = TokenStepper.from_text(tiny_lm, PROMPT)
    for how in CHOICES:
        do_step(stepper, how)
    # A cache whose layers cannot be put back (sliding-window, recurrent) says so this way.
    monkeypatch.setattr(type(stepper._cache), "is_croppable", property(lambda _self: False))
    fed, hook = count_fed_tokens(tiny_lm)
    try:
        stepper.undo()
        stepper.undo()
        stepper.next_top(5)
    finally:
        hook.remove()
    assert fed == [len(stepper.ids)]
    monkeypatch.undo()
    fresh = TokenStepper.from_text(tiny_lm, PROMPT)
    for how in CHOICES[:3]:
        do_step(fresh, how)
    assert_same_state(stepper, fresh)


def test_undo_when_the_context_is_full(tiny_lm):
    limit = tiny_lm.context_length
    stepper = TokenStepper(tiny_lm, [464] * (limit - 2))
    stepper.step()
    last = stepper.step()
    assert last.stop_reason == "context_full" and stepper.room_left == 0
    with pytest.raises(tokstep.PromptError):
        stepper.step()
    assert stepper.undo() == last
    assert stepper.room_left == 1
    assert stepper.step() == last


def test_undo_emits_no_warnings(tiny_lm):
    stepper = TokenStepper.from_text(tiny_lm, PROMPT)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for how in CHOICES:
            do_step(stepper, how)
        while stepper.can_undo:
            stepper.undo()
            stepper.next_top(5)
    assert [str(w.message) for w in caught] == []
