"""Engine benchmark: time per generated token, measured side by side in one run.

Four ways to write the same 64 greedy tokens:
  generate_steps   tokstep's stepping engine (top-k 5, full softmax, display text per step)
  generate         transformers' model.generate(do_sample=False)
  bare loop        the least work possible: a KV-cached forward pass and an argmax per token
  notebook loop    the seed notebook: decode, append text, re-tokenize, run the whole sequence

on a GPT-2-small-shaped model with random weights (the compute of the real GPT-2) and, when
it is there, the bundled model; prompts of 8, 128 and 512 tokens. Each is repeated and the
median kept; within a repetition the four take turns, so drift in the machine's speed touches
all of them alike. Prints a table and the ratios the performance targets are stated in.

    python -m bench.engine                 # everything (a few minutes on 2 CPU cores)
    python -m bench.engine --quick         # fewer repetitions, shorter notebook loop
    python -m bench.engine --smoke         # the bundled model only, 1 repetition (the test suite's)
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from transformers.utils import logging as hf_logging

import tokstep
from bench.common import BUNDLED, GPT2_SMALL_SHAPE, build_model, prompt_ids, synchronize
from tokstep.core.model import LanguageModel

NEW_TOKENS = 64
PROMPT_LENGTHS = (8, 128, 512)


def run_generate_steps(lm: LanguageModel, ids: list[int], n: int) -> None:
    written = sum(1 for _ in tokstep.generate_steps(lm, ids, max_new_tokens=n, top_k=5))
    if written != n:  # e.g. the end-of-text token: the time per token would be divided by too many
        raise RuntimeError(f"generate_steps stopped after {written} of {n} tokens; choose a prompt it does not end")


@torch.inference_mode()
def run_generate(lm: LanguageModel, ids: list[int], n: int) -> None:
    input_ids = torch.tensor([ids], device=lm.device)
    lm.model.generate(
        input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False, max_new_tokens=n, min_new_tokens=n
    )


@torch.inference_mode()
def run_bare_loop(lm: LanguageModel, ids: list[int], n: int) -> None:
    output = lm.model(input_ids=torch.tensor([ids], device=lm.device), use_cache=True, logits_to_keep=1)
    for _ in range(n - 1):
        next_id = output.logits[:, -1].argmax(dim=-1, keepdim=True)  # (1, 1)
        output = lm.model(input_ids=next_id, cache=output.cache, use_cache=True, logits_to_keep=1)
    output.logits[:, -1].argmax(dim=-1)


@torch.inference_mode()
def run_notebook_loop(lm: LanguageModel, ids: list[int], n: int) -> None:
    text = lm.tokenizer.decode(ids)
    for _ in range(n):
        inputs = lm.tokenizer(text, return_tensors="pt").to(lm.device)
        logits = lm.model(**inputs).logits[:, -1, :]
        probabilities = torch.softmax(logits[0], dim=-1)
        text += lm.tokenizer.decode(int(torch.argmax(probabilities)))


Runner = Callable[[LanguageModel, list[int], int], None]
RUNNERS: dict[str, Runner] = {
    "generate_steps": run_generate_steps,
    "generate": run_generate,
    "bare loop": run_bare_loop,
    "notebook loop": run_notebook_loop,
}


def ms_per_token(run: Runner, lm: LanguageModel, ids: list[int], n_tokens: int) -> float:
    started = time.perf_counter()
    run(lm, ids, n_tokens)
    synchronize(str(lm.device))  # on a GPU the bare loop's last argmax may still be queued
    return (time.perf_counter() - started) * 1000 / n_tokens


def bench_model(lm: LanguageModel, repeats: int, notebook_tokens: int) -> list[dict]:
    """Per prompt length, the median ms per token of each runner.

    The runners take turns within each repetition (in an order that rotates), so a change
    in the machine's speed during the run (other work, frequency) touches all of them alike
    instead of whichever ran in that stretch."""
    rows = []
    names = list(RUNNERS)
    for length in PROMPT_LENGTHS:
        if lm.context_length is not None and length + NEW_TOKENS > lm.context_length:
            continue
        ids = prompt_ids(lm, length)
        # The notebook loop re-reads the whole text per token: fewer tokens and repetitions keep it bearable.
        tokens = {name: notebook_tokens if name == "notebook loop" else NEW_TOKENS for name in names}
        reps = {name: max(1, repeats // 2) if name == "notebook loop" else repeats for name in names}
        for name in names:
            RUNNERS[name](lm, ids, tokens[name])  # warm-up: first-call allocations and lazy initialisation
        times: dict[str, list[float]] = {name: [] for name in names}
        for rep in range(repeats):
            for name in names[rep % len(names) :] + names[: rep % len(names)]:
                if len(times[name]) < reps[name]:
                    times[name].append(ms_per_token(RUNNERS[name], lm, ids, tokens[name]))
        row = {"model": lm.name, "prompt": length, **{name: statistics.median(times[name]) for name in names}}
        rows.append(row)
        print_row(row, flush=True)
    return rows


def describe_device(lm: LanguageModel) -> str:
    """Where the model runs and in what precision, e.g. `cuda (NVIDIA H200), torch.bfloat16`."""
    device = lm.device
    name = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    return f"{device.type}{name}, {lm.model.dtype}"


def print_header() -> None:
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {NEW_TOKENS} new tokens; ms per token (median)"
    )
    print(
        f"{'model':<36} {'prompt':>6} {'steps':>8} {'generate':>9} {'bare':>8} {'notebook':>9}"
        f" {'steps/bare':>10} {'gen/steps':>9} {'nb/steps':>9}"
    )


def print_row(row: dict, flush: bool = False) -> None:
    steps, gen, bare, notebook = row["generate_steps"], row["generate"], row["bare loop"], row["notebook loop"]
    print(
        f"{row['model']:<36} {row['prompt']:>6} {steps:>8.2f} {gen:>9.2f} {bare:>8.2f} {notebook:>9.2f}"
        f" {steps / bare:>10.3f} {gen / steps:>9.3f} {notebook / steps:>9.1f}",
        flush=flush,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 repetitions and a 16-token notebook loop")
    parser.add_argument(
        "--smoke", action="store_true", help="the bundled model only, 1 repetition, 4-token notebook loop"
    )
    parser.add_argument("--repeats", type=int, default=7, help="timed repetitions per cell (median kept)")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: where tokstep.load puts it)")
    args = parser.parse_args()
    repeats = 1 if args.smoke else 3 if args.quick else args.repeats
    notebook_tokens = 4 if args.smoke else 16 if args.quick else 32
    hf_logging.set_verbosity_error()  # generate's notes on its defaults are not results

    models = [] if args.smoke else [build_model(GPT2_SMALL_SHAPE, args.device)]
    if BUNDLED in tokstep.bundled_models():
        models.append(build_model(BUNDLED, args.device))
    print_header()
    for lm in models:
        print(f"# {lm.name}: {describe_device(lm)}", flush=True)
        bench_model(lm, repeats, notebook_tokens)
    print(
        "\nsteps/bare: generate_steps' time per token over the bare cached loop's (target <= 1.05)."
        "\ngen/steps: generate's time per token over generate_steps' (target >= 1.0: stepping is no slower)."
        "\nnb/steps: the notebook loop's time per token over generate_steps' (target >= 10 at 512)."
    )


if __name__ == "__main__":
    main()
