"""The batched in-process runtime: what a CPU Space runs under the page.

    runtime = InProcessRuntime()
    lm = runtime.serve(tokstep.load("gpt2"))  # the same model and tokenizer, its passes batched

`serve` gives a LanguageModel whose `forward` is a `BatchedForward`: every pass of that model
goes through its `ForwardBatcher` (tokstep.runtimes.scheduler), so concurrent sessions' steps
share one batched pass, and a run's next pass is queued ahead while its token is shown. What
one runtime holds is shared by every model it serves:

  - one lock: one forward pass at a time in the process, whichever model it is (torch already
    uses every core for one pass; two in parallel threads fight over the cores and both get
    much slower);
  - one `WarmSet`: how many sequences may keep a KV cache in memory at once (the least
    recently used one past it gives its cache back and reads its ids again when next used).

Packing the models' large linear layers for oneDNN (`tokstep.runtimes.packed_linear`) is a
choice of the runtime too (`pack_weights`), made by the app: it changes the model in place.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Hashable, Sequence

import torch
from transformers import PreTrainedModel
from transformers.cache_utils import Cache

from tokstep.core.forward import CacheHolder, Forward, ForwardResult, Inspected, PendingPass, full_logits
from tokstep.core.model import LanguageModel
from tokstep.runtimes.packed_linear import pack_linear_layers
from tokstep.runtimes.scheduler import DEFAULT_MAX_BATCH, ForwardBatcher
from tokstep.runtimes.warm_set import DEFAULT_WARM_SEQUENCES, WarmSet


class BatchedForward(Forward):
    """A model's passes through its batcher, under the runtime's lock and warm set."""

    def __init__(self, runtime: InProcessRuntime, batcher: ForwardBatcher) -> None:
        self.runtime = runtime
        self.batcher = batcher
        self.warm_sequences = runtime.warm_sequences

    def forward(self, ids: Sequence[int], cache: Cache | None, cached: int, sequence: Hashable) -> ForwardResult:
        # Queued and awaited in one step: this thread leads its own pass when none runs, with no
        # hand-over to the runner thread and back (submit, then wait, would allow one).
        return self.batcher.forward(ids, cache, cached, sequence=sequence)

    def prompt_logits(self, ids: Sequence[int]) -> torch.Tensor:
        with self.batcher.forward_lock:  # a pass like any other: one at a time
            return full_logits(self.batcher.model, ids)

    def inspect(self, ids: Sequence[int], reader: Callable[[PreTrainedModel, list[int]], Inspected]) -> Inspected:
        # Under the runtime's lock, as every pass: no other pass runs meanwhile, so none sees the
        # attention implementation the reader may switch to for its own pass.
        with self.batcher.forward_lock, torch.inference_mode():
            return reader(self.batcher.model, [int(i) for i in ids])

    def prefetch(self, ids: Sequence[int], cache: Cache | None, cached: int, sequence: Hashable) -> PendingPass | None:
        # Not for a lone sequence on an accelerator, where it does not pay (see should_prefetch).
        if not self.batcher.should_prefetch(sequence):
            return None
        return self.batcher.submit(ids, cache, cached, sequence=sequence)

    def collect(self, pending: PendingPass) -> ForwardResult:
        return self.batcher.wait(pending)

    def withdraw(self, pending: PendingPass) -> bool:
        return self.batcher.cancel(pending)

    def run_ended(self, sequence: Hashable) -> None:
        self.batcher.forget(sequence)

    def cache_kept(self, holder: CacheHolder) -> None:
        self.warm_sequences.touch(holder)

    def cache_dropped(self, holder: CacheHolder) -> None:
        self.warm_sequences.discard(holder)


class InProcessRuntime:
    """Batched passes in this process, for every model it serves (see the module docstring)."""

    def __init__(
        self,
        *,
        warm_sequences: int = DEFAULT_WARM_SEQUENCES,
        max_batch: int = DEFAULT_MAX_BATCH,
        pack_weights: bool = False,
    ) -> None:
        self.forward_lock = threading.Lock()
        self.warm_sequences = WarmSet(warm_sequences)
        self.max_batch = max_batch
        self.pack_weights = pack_weights

    def serve(self, lm: LanguageModel) -> LanguageModel:
        """`lm` with its passes through a batcher of this runtime: a new LanguageModel over the same
        model and tokenizer (`lm` itself still calls the model directly). Serve a model once and
        share what this returns: steps batch only with steps through the same batcher. The runtime
        keeps no reference to it, so a model nobody uses any more is freed. A LanguageModel this
        runtime serves already is returned as it is."""
        if isinstance(lm.forward, BatchedForward) and lm.forward.runtime is self:
            return lm
        if self.pack_weights:
            pack_linear_layers(lm.model)  # in place; layers packed already are left as they are
        batcher = ForwardBatcher(lm.model, self.forward_lock, max_batch=self.max_batch)
        return dataclasses.replace(lm, forward=BatchedForward(self, batcher))
