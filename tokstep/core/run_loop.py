"""One run of steps: the loop behind `generate_steps`, `/generate`, the page's Auto-run and the chat's.

A run steps one sequence up to a number of tokens and yields each Step as it comes. The loop
  - takes a mark (`TokenStepper.start_run`) and ends quietly once `stop_runs` is called: a Stop,
    an Undo or a pick in another thread ends it before its next step, and no token lands after it;
  - says on the last Step why the run ended (`stop_reason`: "end_of_text", "context_full", or
    "max_new_tokens" when it wrote every token asked for);
  - queues the next token's pass before it hands a token out (`TokenStepper.prefetch`), so that
    pass runs while the caller shows the token;
  - tells the stepper when it ends, finished or stopped (`TokenStepper.end_run`), so a prefetched
    pass nobody will read is withdrawn and no batch waits for this sequence.

It has no threads and no timing policy: a caller that paces its tokens (the page's Auto-run) does
so in its own step callable. A chat turn passes its own `step` (which refuses to write past the end
of the turn) and `ends` (the turn is over at its end-of-turn token).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import Protocol

import torch

from tokstep.core.model import LanguageModel
from tokstep.core.sampling import SamplingSettings
from tokstep.core.stepper import RunStopped, Step, TokenStepper, check_top_k


class StepFn(Protocol):
    """Takes one step of a run: `TokenStepper.step`, `ChatTurn.step`, or one of them paced."""

    def __call__(self, top_k_size: int, *, sampling: SamplingSettings | None, run: int) -> Step: ...


def check_max_new_tokens(max_new_tokens: int) -> int:
    """`max_new_tokens` as an int >= 0, or a ValueError that says what is wrong."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a whole number of 0 or more, got {max_new_tokens!r}.")
    return max_new_tokens


def generate_steps(
    lm: LanguageModel,
    prompt: str | Sequence[int],
    max_new_tokens: int = 20,
    top_k: int = 5,
    sampling: SamplingSettings | None = None,
) -> Iterator[Step]:
    """Generate one Step per token, with the model's top-k at each step: greedy, or seeded
    sampling when `sampling` is given.

    Stops on the end-of-text token, after `max_new_tokens`, or when the model's context
    is full; the last Step's `stop_reason` says which. Greedy is token for token the same
    as `model.generate(do_sample=False)`; sampling gives the same tokens for the same seed.

    >>> for step in generate_steps(lm, "Once upon a time", max_new_tokens=3):
    ...     print(step.token, round(step.prob, 3), step.stop_reason)
    """
    # Arguments are checked here, at the call, not at the first next().
    check_max_new_tokens(max_new_tokens)
    check_top_k(lm, top_k)
    if sampling is not None and not isinstance(sampling, SamplingSettings):
        raise TypeError(f"sampling must be a SamplingSettings or None, got {type(sampling).__name__}.")
    stepper = TokenStepper.from_text(lm, prompt) if isinstance(prompt, str) else TokenStepper(lm, prompt)
    return run_steps(stepper, max_new_tokens, top_k, sampling)


# Gradio resumes a generator on whichever worker thread is free, and torch's grad mode belongs to a
# thread: the decorator enters inference mode around each resumption, wherever it runs.
@torch.inference_mode()
def run_steps(
    stepper: TokenStepper,
    max_new_tokens: int,
    top_k: int,
    sampling: SamplingSettings | None = None,
    *,
    step: StepFn | None = None,
    ends: Callable[[Step], bool] | None = None,
) -> Iterator[Step]:
    """Step `stepper` up to `max_new_tokens` times, yielding each Step; the last one's `stop_reason`
    says why the run ended. Ends quietly, without a Step, once `stepper.stop_runs()` is called.

    `step` takes each step (default `stepper.step`); `ends(step)` says whether the run is over after
    a step besides its stop reason (a chat turn is over at its end-of-turn token). The yielded Step
    carries the "max_new_tokens" reason; the stepper's own record keeps the token as it was chosen,
    so a run file exported afterwards is the same however the tokens were stepped.
    """
    take = step if step is not None else stepper.step
    run = stepper.start_run()
    try:
        for count in range(1, max_new_tokens + 1):
            try:
                taken = take(top_k, sampling=sampling, run=run)
            except RunStopped:  # Stop, Undo or a pick came: the run ends where the sequence is
                return
            over = taken.stop_reason is not None or (ends is not None and ends(taken))
            if not over and count == max_new_tokens:
                taken, over = replace(taken, stop_reason="max_new_tokens"), True
            if not over:
                stepper.prefetch()  # the next token's pass runs while this one is handed out
            yield taken
            if over:
                return
    finally:
        stepper.end_run()  # finished or stopped: a prefetched pass nobody will read is withdrawn
