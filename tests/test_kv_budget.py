"""Only the most recently used sequences keep a KV cache; the others lose nothing."""

from __future__ import annotations

import pytest

import tokstep
from tokstep.core.stepper import TokenStepper
from tokstep.runtimes.in_process import InProcessRuntime
from tokstep.runtimes.warm_set import WarmSet

PROMPTS = ["The cat", "A dog", "One ship", "Two trees", "Three kings"]


@pytest.fixture
def lm_with_three_warm(tiny_lm):
    return InProcessRuntime(warm_sequences=3).serve(tiny_lm)


def test_past_capacity_the_least_recently_used_give_their_cache_back(lm_with_three_warm):
    steppers = [TokenStepper.from_text(lm_with_three_warm, prompt) for prompt in PROMPTS]
    for stepper in steppers:
        stepper.step()
        stepper.next_top()  # computes (and caches) the distribution after the new token
    assert [s.holds_cache for s in steppers] == [False, False, True, True, True]
    assert len(lm_with_three_warm.forward.warm_sequences) == 3


def test_a_cooled_sequence_goes_on_exactly_where_it_was(lm_with_three_warm, served_lm):
    steppers = [TokenStepper.from_text(lm_with_three_warm, prompt) for prompt in PROMPTS]
    for _ in range(3):
        for stepper in steppers:
            stepper.step()
    for prompt, stepper in zip(PROMPTS, steppers, strict=True):
        stepper.step()
        expected = [s.token_id for s in tokstep.generate_steps(served_lm, prompt, max_new_tokens=4)]
        assert stepper.generated_ids == expected
        assert [s.chosen_by for s in stepper.steps] == ["greedy"] * 4
    # Undo still works on a sequence whose cache was given back.
    first = steppers[0]
    first.release()
    first.undo()
    assert first.step().token_id == expected_first_fourth(served_lm)


def expected_first_fourth(served_lm) -> int:
    return [s.token_id for s in tokstep.generate_steps(served_lm, PROMPTS[0], max_new_tokens=4)][3]


def test_a_busy_sequence_is_not_released(lm_with_three_warm):
    stepper = TokenStepper.from_text(lm_with_three_warm, "Busy")
    stepper.step()
    stepper.next_top()
    with stepper._lock:  # as if another thread were stepping it now
        assert stepper.release(blocking=False) is False
    assert stepper.holds_cache
    assert stepper.release(blocking=False) is True
    assert not stepper.holds_cache


def test_capacity_must_be_positive():
    with pytest.raises(ValueError, match="at least 1"):
        WarmSet(capacity=0)


class Sequence:
    """Anything with `release` can be kept warm; this one records that it was released."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.released = False

    def release(self, blocking: bool = True) -> bool:
        self.released = True
        return True


def test_using_a_sequence_again_makes_it_the_most_recent():
    warm = WarmSet(capacity=3)
    a, b, c, d = (Sequence(name) for name in "abcd")
    for sequence in (a, b, c, a, a):  # a is used again: b is now the least recently used
        warm.touch(sequence)
    assert len(warm) == 3
    warm.touch(d)
    assert [s.released for s in (a, b, c, d)] == [False, True, False, False]
    assert len(warm) == 3
    warm.touch(b)  # b comes back (it reads its sequence again): c is now the oldest
    assert c.released and len(warm) == 3
