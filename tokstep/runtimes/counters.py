"""What the batched runtime counts about its passes, for tests and benchmarks (never to steer)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class PassCounters:
    """Totals since the batcher was made; `served / passes` is the mean batch size."""

    passes: int = 0  # batched or single passes run
    served: int = 0  # requests answered by those passes
    largest_batch: int = 0
    pass_seconds: float = 0.0  # wall time spent in those passes
    reused_batches: int = 0  # decode passes that took the last pass's cache as it was
    runner_wakeups: int = 0  # times the runner thread woke up (each takes the GIL from whoever runs)

    def count_pass(self, size: int, seconds: float) -> None:
        """One pass of `size` requests that took `seconds`."""
        self.passes += 1
        self.served += size
        self.largest_batch = max(self.largest_batch, size)
        self.pass_seconds += seconds
