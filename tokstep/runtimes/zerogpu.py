"""The ZeroGPU runtime: every pass in a `spaces.GPU` call, and nothing left on the GPU between calls.

On a ZeroGPU Space (Hugging Face sets SPACES_ZERO_GPU=true; the `spaces` package reads it) a GPU
is attached only while a function decorated with `spaces.GPU` runs. The call runs in a worker
process forked from the app, its arguments and its result are pickled across, and the GPU memory
it used is gone when it returns. So here:

- the model is put on "cuda" when served, at start-up (ZeroGPU moves its weights into each call);
- a pass is a decorated function that takes plain ids (and, with `strategy="move"`, the KV cache
  as CPU tensors) and returns the summary on the CPU: no tensor of a call outlives it on the GPU;
- the KV cache stays on the CPU between calls. `strategy="reread"` (the default) keeps only the
  ids and reads the whole sequence again in each call; `"move"` ships the CPU cache into the call
  and back. bench/zerogpu_cache.py measures both (docs/deploy.md, "ZeroGPU"): re-reading sends a
  few hundred bytes of ids each way where moving pickles the whole cache through the worker's pipe
  twice per token, and it works for every cache type.

Outside a ZeroGPU Space `spaces.GPU` returns the function unchanged, so the same code runs in the
caller's thread on a CPU: that is how the tests run it. Each pass is its own GPU call, so an
Auto-run or /generate costs one call (and ZeroGPU's start of a call) per token.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Hashable, Sequence
from typing import Any

import spaces
import torch
from transformers import PreTrainedModel
from transformers.cache_utils import DynamicCache, DynamicLayer

from tokstep.core.distribution import NextTokenSummary, summarize
from tokstep.core.forward import DirectForward, Forward, ForwardResult, elapsed_ms, model_device, output_cache
from tokstep.core.model import LanguageModel
from tokstep.runtimes.engine import EngineCache

# Seconds ZeroGPU reserves for one call. A pass takes milliseconds; a shorter reservation gets a
# GPU sooner (ZeroGPU queues by it) and is what a visitor's daily quota is checked against.
PASS_DURATION_S = 10
STRATEGIES = ("reread", "move")

# The models the decorated passes run, by key. The GPU worker is forked from this process, so it
# finds them here; passing a model as an argument would pickle all of it into every call.
_MODELS: dict[int, PreTrainedModel] = {}


def on_zero_gpu(env: dict[str, str] | os._Environ = os.environ) -> bool:
    """Whether this process runs on a ZeroGPU Space: SPACES_ZERO_GPU as the `spaces` package reads it."""
    return env.get("SPACES_ZERO_GPU", "").lower() in ("1", "t", "true")


def _to_cpu(summary: NextTokenSummary) -> NextTokenSummary:
    return dataclasses.replace(summary, logits=summary.logits.cpu(), probs=summary.probs.cpu())


@spaces.GPU(duration=PASS_DURATION_S)
def gpu_pass(
    model_key: int, ids: list[int], cache: list[tuple[torch.Tensor, torch.Tensor]] | None, keep_cache: bool
) -> tuple[NextTokenSummary, list[tuple[torch.Tensor, torch.Tensor]] | None, float]:
    """One pass on the GPU: `ids` on top of `cache` (CPU tensors, one (keys, values) per layer; None
    to read `ids` from the start). Returns the summary on the CPU, with `keep_cache` the cache as
    CPU tensors (None when it is not plain keys and values), and the pass's milliseconds."""
    model = _MODELS[model_key]
    device = model_device(model)
    with torch.inference_mode():
        past = DynamicCache(ddp_cache_data=[(k.to(device), v.to(device)) for k, v in cache]) if cache else None
        started = time.perf_counter()
        output = model(input_ids=torch.tensor([ids], device=device), cache=past, use_cache=keep_cache, logits_to_keep=1)
        (summary,) = summarize(output.logits[:, -1])
        forward_ms = elapsed_ms(started, summary.logits)
        layers = _cpu_layers(output_cache(output)) if keep_cache else None
        return _to_cpu(summary), layers, forward_ms


@spaces.GPU(duration=PASS_DURATION_S)
def gpu_prompt_logits(model_key: int, ids: list[int]) -> torch.Tensor:
    """The logits at every position of `ids` (T, vocab), read with no cache, on the CPU."""
    model = _MODELS[model_key]
    with torch.inference_mode():
        return model(input_ids=torch.tensor([ids], device=model_device(model)), use_cache=False).logits[0].cpu()


@spaces.GPU(duration=PASS_DURATION_S)
def gpu_prompt_scores(model_key: int, ids: list[int]) -> list[tuple[float, int]]:
    """Each prompt token's probability and rank (tokstep.core.forward.Forward.prompt_scores), worked
    out on the GPU: only the numbers cross the pipe, not the (T, vocab) logits."""
    return DirectForward(_MODELS[model_key]).prompt_scores(ids)


def _cpu_layers(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """A cache's keys and values as CPU tensors, or None when it is not a plain DynamicCache."""
    layers = getattr(cache, "layers", None)
    if not isinstance(cache, DynamicCache) or not layers or not all(type(layer) is DynamicLayer for layer in layers):
        return None
    return [(layer.keys.cpu(), layer.values.cpu()) for layer in layers]


class ZeroGPUForward(Forward):
    """A model's passes, each in its own `spaces.GPU` call (see the module docstring)."""

    runs_where = "in ZeroGPU's GPU calls, each of which sends back only the next token's distribution"  # no `inspect`

    def __init__(self, model: PreTrainedModel, strategy: str) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}.")
        self.model = model
        self.key = id(model)
        self.strategy = strategy
        _MODELS[self.key] = model

    def forward(self, ids: Sequence[int], cache: Any, cached: int, sequence: Hashable) -> ForwardResult:
        ids = [int(i) for i in ids]
        if self.strategy == "move" and not isinstance(cache, EngineCache):
            layers = _cpu_layers(cache) if cache is not None else None
            if cache is None or layers is not None:
                summary, new_layers, forward_ms = gpu_pass(self.key, ids, layers, True)
                if new_layers is not None:
                    return ForwardResult(DynamicCache(ddp_cache_data=new_layers), summary, forward_ms)
                # Not plain keys and values (sliding windows, recurrent state): re-read from here on.
                return ForwardResult(EngineCache(ids), summary, forward_ms)
        # Re-read: the cache is the ids read so far, and the call reads all of them again.
        seen = cache.ids[:cached] if isinstance(cache, EngineCache) else []
        sequence_ids = [*seen, *ids]
        summary, _, forward_ms = gpu_pass(self.key, sequence_ids, None, False)
        return ForwardResult(EngineCache.holding(cache, sequence_ids), summary, forward_ms)

    def prompt_logits(self, ids: Sequence[int]) -> torch.Tensor:
        return gpu_prompt_logits(self.key, [int(i) for i in ids])

    def prompt_scores(self, ids: Sequence[int]) -> list[tuple[float, int]]:
        return gpu_prompt_scores(self.key, [int(i) for i in ids])


class ZeroGPURuntime:
    """Passes in `spaces.GPU` calls, for a ZeroGPU Space (`on_zero_gpu()`); a plain call elsewhere.

    `serve(lm)` puts the model on "cuda" when on ZeroGPU (at start-up, where ZeroGPU expects it) and
    returns `lm` with a ZeroGPUForward; an lm it serves already comes back as it is."""

    def __init__(self, strategy: str = "reread") -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}.")
        self.strategy = strategy

    def serve(self, lm: LanguageModel) -> LanguageModel:
        if isinstance(lm.forward, ZeroGPUForward) and lm.forward.strategy == self.strategy:
            return lm
        if on_zero_gpu():
            lm.model.to("cuda")
        return dataclasses.replace(lm, forward=ZeroGPUForward(lm.model, self.strategy))
