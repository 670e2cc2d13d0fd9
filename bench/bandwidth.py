"""What bounds a decode step: bytes of weights read per token against measured memory bandwidth.

A decode step of one sequence multiplies a single token's activations by every weight matrix, so
it reads all the weights once (the input and position embeddings only a row each; GPT-2's output
layer shares the token embedding and reads all of it). At a few hundred MB per token and no reuse,
memory bandwidth, not arithmetic, sets the floor: time per token >= bytes read / bandwidth.

Measured here, in one run:
  bandwidth     torch on a large tensor (--mib, default 512 MiB, far past the caches): a sum (reads
                only) and a copy (reads and writes, both counted), with torch's default threads;
                median and best of the repetitions
  bytes/token   counted from the model's own parameters (GPT-2-small shape, fp32 on CPU), plus
                the KV cache a step reads at the prompt lengths shown
  engine        the bare cached loop (a forward pass and an argmax) and generate_steps (top-k 5),
                ms per token at an 8-token prompt, repetitions interleaved; from those, the
                bandwidth they achieve and how close they come to the floor

    python -m bench.bandwidth            # 512 MiB tensors, 7 repetitions, 64 tokens
    python -m bench.bandwidth --quick    # 3 repetitions, 32 tokens
    python -m bench.bandwidth --smoke    # 64 MiB, the bundled model, 1 repetition (the test suite's)
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

import tokstep
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
    synchronize,
)
from tokstep.core.model import LanguageModel

PROMPT_TOKENS = 8
KV_CONTEXTS = (8, 128, 512, 1024)


def bandwidth_gb_s(mib: int, repeats: int, device: str) -> dict[str, list[float]]:
    """GB/s (10^9 bytes) of a sum (bytes read) and a copy (bytes read + bytes written)."""
    source = torch.ones(mib * 2**20 // 4, dtype=torch.float32, device=device)
    target = torch.empty_like(source)
    nbytes = source.numel() * source.element_size()
    results: dict[str, list[float]] = {"sum (read)": [], "copy (read + write)": []}
    for repeat in range(repeats + 1):  # the first of each is a warm-up: page faults, thread start
        synchronize(device)
        started = time.perf_counter()
        source.sum().item()
        sum_s = time.perf_counter() - started
        started = time.perf_counter()
        target.copy_(source)
        synchronize(device)
        copy_s = time.perf_counter() - started
        if repeat:
            results["sum (read)"].append(nbytes / sum_s / 1e9)
            results["copy (read + write)"].append(2 * nbytes / copy_s / 1e9)
    return results


def weight_bytes_per_token(lm: LanguageModel) -> int:
    """Bytes of parameters one decode step reads: all of them (tied ones once), except embedding
    tables, of which a step reads one row; an output layer tied to the token embedding is read whole."""
    model = lm.model
    unique = {id(p): p for p in model.parameters()}
    total = sum(p.numel() * p.element_size() for p in unique.values())
    output = model.get_output_embeddings()
    for module in model.modules():
        # A packed linear layer (tokstep.runtimes.packed_linear) keeps its weight and bias as parameters,
        # counted above; a step reads its packed copy instead, of the same size.
        if isinstance(module, torch.nn.Embedding) and module.weight is not getattr(output, "weight", None):
            total -= module.weight.numel() * module.weight.element_size()
    return total


def kv_bytes_per_position(lm: LanguageModel) -> int:
    """Bytes of keys and values a step reads per position already in the cache (all layers)."""
    config = lm.model.config.get_text_config()
    head_dim = config.hidden_size // config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    element = next(lm.model.parameters()).element_size()
    return 2 * config.num_hidden_layers * kv_heads * head_dim * element


@torch.inference_mode()
def bare_loop(lm: LanguageModel, ids: list[int], n: int) -> None:
    output = lm.model(input_ids=torch.tensor([ids], device=lm.device), use_cache=True, logits_to_keep=1)
    for _ in range(n - 1):
        next_id = output.logits[:, -1].argmax(dim=-1, keepdim=True)
        output = lm.model(input_ids=next_id, cache=output.cache, use_cache=True, logits_to_keep=1)
    output.logits[:, -1].argmax(dim=-1).tolist()


def steps(lm: LanguageModel, ids: list[int], n: int) -> None:
    for _ in tokstep.generate_steps(lm, ids, max_new_tokens=n, top_k=5):
        pass


def ms_per_token(
    runs: dict[str, Callable], lm: LanguageModel, ids: list[int], n: int, repeats: int
) -> dict[str, list[float]]:
    """ms per token of each run, repetitions interleaved so that a change in load hits them all."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for run in runs.values():
        run(lm, ids, n)  # warm-up
    for _ in range(repeats):
        for name, run in runs.items():
            started = time.perf_counter()
            run(lm, ids, n)
            times[name].append((time.perf_counter() - started) * 1000 / n)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 repetitions, 32 tokens")
    parser.add_argument("--smoke", action="store_true", help="64 MiB, the bundled model, 1 repetition, 8 tokens")
    parser.add_argument("--repeats", type=int, default=7, help="timed repetitions (median kept)")
    parser.add_argument("--mib", type=int, default=512, help="size of the tensor read, MiB")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per engine run")
    parser.add_argument("--model", default=GPT2_SMALL_SHAPE, help=f"{GPT2_SMALL_SHAPE}, {BUNDLED}, ...")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, ... (the tensors' and the model's)")
    parser.add_argument("--markdown", action="store_true", help="print the tables as Markdown")
    args = parser.parse_args()
    if args.smoke:
        args.mib, args.model, args.tokens, repeats = 64, BUNDLED, 8, 1
    else:
        repeats = 3 if args.quick else args.repeats
        args.tokens = 32 if args.quick else args.tokens
    quiet_transformers()

    print(machine_line())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    bandwidth = bandwidth_gb_s(args.mib, repeats, args.device)
    print(f"\nmemory bandwidth, {args.mib} MiB tensors, {repeats} repetitions (GB = 10^9 bytes):")
    print_table(
        ["operation", "median GB/s", "best GB/s"],
        [[name, fmt(median(values), 1), fmt(max(values), 1)] for name, values in bandwidth.items()],
        markdown=args.markdown,
    )
    read_gb_s = median(bandwidth["sum (read)"])

    lm = build_model(args.model, args.device)
    ids = prompt_ids(lm, PROMPT_TOKENS)
    weights = weight_bytes_per_token(lm)
    kv = kv_bytes_per_position(lm)
    dtype = str(next(lm.model.parameters()).dtype).removeprefix("torch.")
    print(
        f"\n{lm.name}, {dtype}: weights read per token {weights / 1e6:.1f} MB; KV cache {kv / 1e3:.1f} kB per position"
    )
    rows = []
    for context in (c for c in KV_CONTEXTS if lm.context_length is None or c <= lm.context_length):
        total = weights + kv * context
        rows.append([str(context), fmt(total / 1e6, 1), fmt(total / read_gb_s / 1e6, 2)])
    print_table(["context", "MB read per token", "floor ms/token"], rows, markdown=args.markdown)

    engine_rows = []
    times = ms_per_token({"bare cached loop": bare_loop, "generate_steps": steps}, lm, ids, args.tokens, repeats)
    read_bytes = weights + kv * (PROMPT_TOKENS + args.tokens // 2)  # at the run's mean context
    floor_ms = read_bytes / read_gb_s / 1e6
    for name, values in times.items():
        ms, best = median(values), min(values)
        engine_rows.append(
            [name, fmt(ms, 2), fmt(best, 2), fmt(floor_ms, 2), fmt(read_bytes / ms / 1e6, 1),
             fmt(100 * floor_ms / ms, 0), fmt(100 * floor_ms / best, 0)]
        )  # fmt: skip
    print(f"\nthe engine, prompt {PROMPT_TOKENS} tokens, {args.tokens} new tokens, median of {repeats}:")
    headers = ["loop", "ms/token", "best ms/token", "floor ms/token", "achieved GB/s", "% of floor", "% (best)"]
    print_table(headers, engine_rows, markdown=args.markdown)
    print(
        "\nfloor: bytes read per token / the sum's median bandwidth, at the run's mean context."
        "\nachieved: the same bytes / the median time per token. % of floor: floor / time (100% = a step at the"
        "\nmemory's speed); best: the fastest repetition, less disturbed by other work on a shared machine."
    )


if __name__ == "__main__":
    main()
