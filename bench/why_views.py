"""What the "Why this token?" views cost a /generate run, measured side by side in one run.

/generate's own generator (tokstep.web.api.generate_updates) writes the same greedy tokens five ways:
  plain           no views: what /generate does unless asked
  layers          and each token's logit lens (layers=True)
  attention       and where each token's last position looked (attention=True)
  both            and both
  re-read both    both, read the way the page's section reads one sequence (why_this_token: the whole
                  sequence again at every token), instead of along the run on a KV cache of its own
                  (tokstep.core.why.WhyReader): what that cache saves

on a GPT-2-small-shaped model (random weights, the compute of the real GPT-2) and the bundled model,
served by the batched runtime as the app serves them, with prompts of 8 and 128 tokens. Within each
repetition the five take turns, in an order that rotates, and the median is kept. Prints ms per token
and each one's ratio to plain.

    python -m bench.why_views            # both models (a few minutes on 2 CPU cores)
    python -m bench.why_views --smoke    # the bundled model, 1 repetition, 8 tokens (the test suite's)
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

import tokstep
from bench.common import BUNDLED, GPT2_SMALL_SHAPE, build_model, machine_line, prompt_ids, quiet_transformers
from tokstep.core.model import LanguageModel
from tokstep.core.run_loop import run_steps
from tokstep.core.stepper import TokenStepper
from tokstep.core.why import why_this_token
from tokstep.web.api import API_TOP_K, generate_updates

NEW_TOKENS = 32
PROMPT_LENGTHS = (8, 128)
SMOKE_TOKENS = 8  # --smoke: the 8-token prompt only, and fewer tokens (the test suite's: that it runs)


def views_run(layers: bool, attention: bool) -> Callable[[LanguageModel, list[int], int], None]:
    def run(lm: LanguageModel, ids: list[int], n: int) -> None:
        prompt = lm.texts.decode(ids)
        written = sum(1 for _ in generate_updates(lm, prompt, n, layers=layers, attention=attention))
        if written != n:
            raise RuntimeError(f"/generate stopped after {written} of {n} tokens; choose a prompt it does not end")

    return run


@torch.inference_mode()
def reread_run(lm: LanguageModel, ids: list[int], n: int) -> None:
    """Both views for every token, each read from the whole sequence (a fresh pass per token), on the
    run loop /generate steps with."""
    stepper = TokenStepper(lm, ids)
    for step in run_steps(stepper, n, API_TOP_K, None):
        why_this_token(lm, stepper.ids[: step.position], top_k=API_TOP_K)


RUNNERS = {
    "plain": views_run(False, False),
    "layers": views_run(True, False),
    "attention": views_run(False, True),
    "both": views_run(True, True),
    "re-read both": reread_run,
}


def ms_per_token(
    run: Callable[[LanguageModel, list[int], int], None], lm: LanguageModel, ids: list[int], tokens: int
) -> float:
    started = time.perf_counter()
    run(lm, ids, tokens)
    return (time.perf_counter() - started) * 1000 / tokens


def bench_model(lm: LanguageModel, repeats: int, lengths: tuple[int, ...], tokens: int) -> None:
    names = list(RUNNERS)
    for length in lengths:
        if lm.context_length is not None and length + tokens > lm.context_length:
            continue
        ids = prompt_ids(lm, length)
        for name in names:
            RUNNERS[name](lm, ids, tokens)  # warm-up
        times: dict[str, list[float]] = {name: [] for name in names}
        for rep in range(repeats):
            for name in names[rep % len(names) :] + names[: rep % len(names)]:
                times[name].append(ms_per_token(RUNNERS[name], lm, ids, tokens))
        medians = {name: statistics.median(values) for name, values in times.items()}
        cells = " ".join(f"{medians[name]:>9.2f} {medians[name] / medians['plain']:>5.2f}x" for name in names)
        print(f"{lm.name:<36} {length:>6} {cells}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="the bundled model only, 1 repetition")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions per cell (median kept)")
    args = parser.parse_args()
    quiet_transformers()
    repeats = 1 if args.smoke else args.repeats
    lengths, tokens = (PROMPT_LENGTHS[:1], SMOKE_TOKENS) if args.smoke else (PROMPT_LENGTHS, NEW_TOKENS)
    print(machine_line())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {tokens} new tokens; ms per token (median)")
    print(f"{'model':<36} {'prompt':>6} " + " ".join(f"{name:>16}" for name in RUNNERS))
    models = [] if args.smoke else [build_model(GPT2_SMALL_SHAPE)]
    if BUNDLED in tokstep.bundled_models():
        models.append(build_model(BUNDLED))
    for lm in models:
        bench_model(lm, repeats, lengths, tokens)
    print(
        "\nEach cell: ms per token, and its ratio to plain. The views run a second pass per token (and the"
        "\nlens the output layer on every layer's stream); /generate counts such a run's tokens three times."
    )


if __name__ == "__main__":
    main()
