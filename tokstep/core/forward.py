"""The forward seam: where a sequence's next-token distribution comes from.

The stepper never runs the model itself. It asks a `Forward` for the distribution after a
sequence's ids, handing it the ids not yet in the sequence's KV cache, the cache, and how many
positions the cache holds:

    stepper ──forward(ids, cache, cached, sequence)──▶ Forward ──▶ ForwardResult(cache, summary)

`DirectForward` is the default: it calls the model in the caller's thread, one sequence at a
time, with nothing shared between sequences. That is what a notebook gets from `tokstep.load`
and `generate_steps`: no thread, no lock, no bound on the caches it keeps. A server plugs in
another runtime (`tokstep.runtimes`): the batched in-process one shares passes between
sessions and may run a sequence's next pass ahead (`prefetch`) and bound the caches kept
(`cache_kept`); the hooks below let it, and do nothing here.

Who asks is a `SequenceKey`: the stepper, and the client it steps for (a server's page session or
API caller; None in a notebook). Runtimes compare keys by stepper alone; one that shares its passes
between clients (the batched runtime, when more sequences wait than fit in a pass) reads the client.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import torch
from transformers import PreTrainedModel
from transformers.cache_utils import Cache

from tokstep.core.distribution import NextTokenSummary, logits_to_probs, summarize


@dataclass(frozen=True)
class ForwardResult:
    """What one sequence gets back from a pass."""

    # Its KV cache, now holding every id it sent (None: the model keeps no cache). A runtime whose
    # state lives elsewhere (a serving engine) gives an object with the same `crop` verb instead.
    cache: Cache | None
    summary: NextTokenSummary  # the next token's logits, full softmax, entropy, top tokens
    forward_ms: float  # wall time of the pass it was part of, summaries included


@dataclass(frozen=True)
class SequenceKey:
    """Who asks for a pass: one stepper (`stepper`, its id) and the client it steps for.

    Equal and hashed by `stepper` alone, so the key names the same sequence whoever it steps for.
    `client` is any hashable the caller chooses (tokstep's web layer: a page session or an API
    caller's address), or None: then the sequence counts as a client of its own."""

    stepper: int
    client: Hashable = field(default=None, compare=False)


def client_of(sequence: Hashable) -> Hashable:
    """The client a pass's `sequence` steps for: its key's client, or the sequence itself when it
    names none (a key without a client, or any other hashable a caller passed)."""
    client = getattr(sequence, "client", None)
    return client if client is not None else sequence


@dataclass(eq=False)
class PendingPass:
    """A pass queued ahead (`Forward.prefetch`) and not yet read: the runtime fills it in."""

    ids: list[int]  # tokens not yet in the cache, in order
    cache: Cache | None  # holds `cached` positions, or None
    cached: int
    sequence: Hashable = None  # who asks: the same for every step of one sequence
    result: ForwardResult | None = None
    error: BaseException | None = None
    done: bool = False
    forgotten: bool = False  # its run ended while its pass ran: the pass does not expect it back


class PassCancelled(Exception):
    """A sequence's pass was cancelled while it ran (`Forward.interrupt`): nothing was changed."""


class ModelNotHere(RuntimeError):
    """What needs the model itself in this process (`Forward.inspect`: the "Why this token?" views) on
    a runtime whose passes run elsewhere (a serving engine, ZeroGPU's GPU calls). The message is one
    sentence for the page."""


# What `Forward.inspect` hands back: whatever its reader returns.
Inspected = TypeVar("Inspected")


class CacheHolder(Protocol):
    """A sequence that keeps a KV cache and can give it back (TokenStepper)."""

    def release(self, blocking: bool = True) -> bool: ...


class Forward:
    """Where passes run. Subclasses give `forward` and `prompt_logits`; the rest are hooks a
    runtime may use, and do nothing by default."""

    # Where a runtime that does not run the model in this process runs it, for ModelNotHere's message.
    runs_where = "elsewhere"

    def forward(self, ids: Sequence[int], cache: Cache | None, cached: int, sequence: Hashable) -> ForwardResult:
        """Feed `ids` on top of `cache` (which holds `cached` positions) and return the next
        token's distribution with the cache extended by them. `cache` may be extended in place."""
        raise NotImplementedError

    def prompt_logits(self, ids: Sequence[int]) -> torch.Tensor:
        """The model's logits at every position of `ids`, read with no cache: (T, vocab)."""
        raise NotImplementedError

    def prompt_scores(self, ids: Sequence[int]) -> list[tuple[float, int]]:
        """For each token of `ids` after the first: the full-vocabulary probability the model gave
        it after the tokens before it, and its rank (1 + the number of tokens more likely).

        From `prompt_logits` by default; a runtime without the whole distribution (a serving
        engine) asks for these numbers directly."""
        probs = logits_to_probs(self.prompt_logits(ids)[:-1])  # (T - 1, vocab): row i predicts ids[i + 1]
        targets = torch.tensor(list(ids[1:]), device=probs.device)  # (T - 1,)
        target_probs = probs.gather(1, targets[:, None])  # (T - 1, 1)
        ranks = (probs > target_probs).sum(dim=1) + 1  # (T - 1,)
        return list(zip(target_probs[:, 0].tolist(), ranks.tolist(), strict=True))

    def inspect(self, ids: Sequence[int], reader: Callable[[PreTrainedModel, list[int]], Inspected]) -> Inspected:
        """`reader(model, ids)`: an extra pass over `ids` that reads more of the model than the next
        token's distribution (hidden states, attention weights: tokstep.core.why), run where and when
        this runtime runs its passes. It runs in inference mode and, in a runtime that shares the model
        between threads, one at a time with its other passes, so the reader may switch the model's
        attention implementation for its own pass (restoring it before it returns). Never on a step's
        path: only what asks for it pays. ModelNotHere where the model does not run in this process."""
        raise ModelNotHere(
            f"This needs the model's own layers in this process, and here its passes run {self.runs_where}."
        )

    def prefetch(self, ids: Sequence[int], cache: Cache | None, cached: int, sequence: Hashable) -> PendingPass | None:
        """Queue the pass `forward` would run and return at once, or None when this runtime does
        not run passes ahead (then the step runs it when it needs it)."""
        return None

    def collect(self, pending: PendingPass) -> ForwardResult:
        """The result of a prefetched pass, waiting for it to run."""
        raise NotImplementedError(f"{type(self).__name__} runs no pass ahead")

    def withdraw(self, pending: PendingPass) -> bool:
        """Take a prefetched pass back; False when it has run or is running (see `pending.done`)."""
        return False

    def run_ended(self, sequence: Hashable) -> None:
        """A run of steps of `sequence` ended: no pass should wait for it."""

    def interrupt(self, sequence: Hashable) -> None:
        """Cancel `sequence`'s passes in flight, and refuse its new ones until `resume(sequence)`:
        each raises PassCancelled. In process there is nothing to do: a pass takes milliseconds,
        and the step waiting for it ends with it; a serving engine's request can take seconds."""

    def resume(self, sequence: Hashable) -> None:
        """End an `interrupt(sequence)`: its passes run again."""

    def cache_kept(self, holder: CacheHolder) -> None:
        """`holder` just stored a cache from a pass (a runtime may bound how many are kept)."""

    def cache_dropped(self, holder: CacheHolder) -> None:
        """`holder` gave its cache back."""


def model_device(model: PreTrainedModel) -> torch.device:
    """Where input ids go: the device of the input embeddings (it may move after loading)."""
    return model.get_input_embeddings().weight.device


def output_cache(output: Any) -> Cache | None:
    """The cache a forward pass returned, or None for a model that keeps its state elsewhere."""
    return getattr(output, "cache", None)


def elapsed_ms(started: float, logits: torch.Tensor) -> float:
    """Milliseconds since `started` (perf_counter), once the pass that made `logits` has ended."""
    if logits.device.type == "cuda":
        torch.cuda.synchronize(logits.device)  # the pass ran asynchronously: wait for it to end
    return (time.perf_counter() - started) * 1000.0


def one_pass(model: PreTrainedModel, ids: Sequence[int], cache: Cache | None) -> ForwardResult:
    """One sequence's pass: `ids` on top of `cache`, only the last position's logits kept."""
    pending = torch.tensor([list(ids)], device=model_device(model))  # (1, T_new)
    started = time.perf_counter()
    output = model(input_ids=pending, cache=cache, use_cache=True, logits_to_keep=1)  # logits (1, 1, vocab)
    (summary,) = summarize(output.logits[:, -1])  # from (1, vocab)
    return ForwardResult(output_cache(output), summary, elapsed_ms(started, summary.logits))


def full_logits(model: PreTrainedModel, ids: Sequence[int]) -> torch.Tensor:
    """An uncached pass over the whole of `ids`: (T, vocab)."""
    with torch.inference_mode():
        return model(input_ids=torch.tensor([list(ids)], device=model_device(model)), use_cache=False).logits[0]


class DirectForward(Forward):
    """The model called in the caller's thread, one sequence at a time: what a notebook gets.

    >>> lm = tokstep.load("tinystories")
    >>> type(lm.forward).__name__
    'DirectForward'
    """

    def __init__(self, model: PreTrainedModel) -> None:
        self.model = model

    def forward(self, ids: Sequence[int], cache: Cache | None, cached: int, sequence: Hashable) -> ForwardResult:
        with torch.inference_mode():
            return one_pass(self.model, ids, cache)

    def prompt_logits(self, ids: Sequence[int]) -> torch.Tensor:
        return full_logits(self.model, ids)

    def inspect(self, ids: Sequence[int], reader: Callable[[PreTrainedModel, list[int]], Inspected]) -> Inspected:
        # In the caller's thread, as every pass here: a notebook that inspects while another of its
        # threads steps the same model lets that step run with the reader's attention implementation
        # (the same numbers, to float rounding).
        with torch.inference_mode():
            return reader(self.model, [int(i) for i in ids])
