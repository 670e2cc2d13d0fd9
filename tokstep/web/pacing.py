"""Auto-run's pace: a step callable that takes each step a set time after the one before began.

The run loop (tokstep.core.run_loop) has no timing of its own; the page and the chat hand it a
`Paced` step. The wait comes before a step, never after the last one, so a run that ends ends at
once; and the next token's pass, queued by the loop before it handed the token out, runs during it.
A Stop that comes while a run waits ends it when the wait is over: its step then finds the run
stopped.
"""

from __future__ import annotations

import time

from tokstep.core.run_loop import StepFn
from tokstep.core.sampling import SamplingSettings
from tokstep.core.stepper import Step


class Paced:
    """`step`, taken at most once every `pause_s` seconds (counted from the start of the step before)."""

    def __init__(self, step: StepFn, pause_s: float) -> None:
        self.step = step
        self.pause_s = pause_s
        self._last_start: float | None = None

    def __call__(self, top_k_size: int, *, sampling: SamplingSettings | None, run: int) -> Step:
        if self._last_start is not None:
            time.sleep(max(0.0, self._last_start + self.pause_s - time.monotonic()))
        self._last_start = time.monotonic()
        return self.step(top_k_size, sampling=sampling, run=run)
