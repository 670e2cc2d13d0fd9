"""Packing: one cached decode step with plain linear layers against the same weights packed for oneDNN.

The app packs its models' large fp32 linear layers on a CPU (tokstep/runtimes/packed_linear.py). This
measures what that buys, side by side in one run: the same model twice (plain, and a packed copy
with the same weights), one decode step (a cached forward pass over one new token per sequence,
after a 64-token prompt) at several batch sizes, interleaved over repetitions, median kept. It
also reports how far the two copies' next-token probabilities are apart (float32 rounding only).

    python -m bench.packing                 # GPT-2-small shape and the bundled model, 15 repetitions
    python -m bench.packing --quick         # 5 repetitions
    python -m bench.packing --smoke         # the bundled model, 2 repetitions (the test suite's)
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from bench.common import (
    BUNDLED,
    GPT2_SMALL_SHAPE,
    build_model,
    fmt,
    machine_line,
    median,
    print_table,
    prompt_ids,
    quiet_transformers,
)
from tokstep.core.model import LanguageModel
from tokstep.runtimes.packed_linear import PackedLinear, pack_linear_layers

PROMPT_TOKENS = 64
BATCHES = (1, 8, 30)


@torch.inference_mode()
def step_timer(model: torch.nn.Module, ids: list[int], batch: int):
    """A function that times one cached decode step for `batch` copies of the prompt, and the
    step's next-token probabilities (batch, vocab). The cache is cropped back after each step,
    so every timed step reads the same number of positions."""
    output = model(input_ids=torch.tensor([ids] * batch), use_cache=True, logits_to_keep=1)
    cache = output.cache
    next_ids = output.logits[:, -1].argmax(dim=-1, keepdim=True)  # (batch, 1)

    def one_step() -> tuple[float, torch.Tensor]:
        with torch.inference_mode():
            started = time.perf_counter()
            logits = model(input_ids=next_ids, cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
            elapsed = time.perf_counter() - started
            cache.crop(-1)
        return elapsed, torch.softmax(logits, dim=-1)

    return one_step


def measure(lm: LanguageModel, repeats: int) -> list[list[str]]:
    plain = lm.model
    packed = copy.deepcopy(plain)
    layers = pack_linear_layers(packed)
    ids = prompt_ids(lm, PROMPT_TOKENS)
    rows = []
    for batch in BATCHES:
        timers = {"plain": step_timer(plain, ids, batch), "packed": step_timer(packed, ids, batch)}
        times: dict[str, list[float]] = {name: [] for name in timers}
        probs: dict[str, torch.Tensor] = {}
        for timer in timers.values():
            timer()  # warm-up: first-call allocations, oneDNN's kernel choice
        for _ in range(repeats):
            for name, timer in timers.items():  # interleaved: a change in the machine's load hits both
                elapsed, probs[name] = timer()
                times[name].append(elapsed)
        plain_ms, packed_ms = median(times["plain"]) * 1000, median(times["packed"]) * 1000
        gap = (probs["plain"] - probs["packed"]).abs().max().item()
        speed_up = fmt(plain_ms / packed_ms, 2)
        rows.append([lm.name, str(layers), str(batch), fmt(plain_ms, 2), fmt(packed_ms, 2), speed_up, f"{gap:.1e}"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="5 repetitions")
    parser.add_argument("--smoke", action="store_true", help="the bundled model, 2 repetitions")
    parser.add_argument("--repeats", type=int, default=15, help="timed repetitions (median kept)")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = parser.parse_args()
    repeats = 2 if args.smoke else 5 if args.quick else args.repeats
    names = [BUNDLED] if args.smoke else [GPT2_SMALL_SHAPE, BUNDLED]
    quiet_transformers()

    print(machine_line())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; one decode step after {PROMPT_TOKENS} tokens")
    rows = []
    for name in names:
        lm = build_model(name, "cpu", pack_weights=False)
        assert not any(isinstance(module, PackedLinear) for module in lm.model.modules())
        rows += measure(lm, repeats)
    headers = ["model", "packed layers", "batch", "plain ms", "packed ms", "speed-up", "max |Δp|"]
    print_table(headers, rows, markdown=args.markdown)
    print(
        "\nplain: the layers as transformers builds them (MKL re-packs each weight at every call); packed:"
        "\nthe same weights laid out for oneDNN once. max |Δp|: the largest difference between the two"
        "\ncopies' next-token probabilities. A model with no layer over the threshold packs none (speed-up ~1)."
    )


if __name__ == "__main__":
    main()
