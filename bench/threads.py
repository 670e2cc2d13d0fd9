"""Threads: two sessions' decode steps in parallel Python threads, against one after another.

Two sequences (the same prompt, each with its own KV cache) each take N greedy decode steps
(a cached forward pass and an argmax, nothing else) on GPT-2-small shape, five ways:

  one after another   sequence A's N steps, then B's, torch using every core for each pass
                      (what tokstep's forward lock does)
  2 threads           A and B in two Python threads at once, each pass using every core
                      (torch's default): the threads' kernels compete for the same cores
  2 threads x 1 core  the same with torch.set_num_threads(1) in each thread: the cores split
  one after another x 1 core
                      taking turns, one core per pass: whether torch's threads help at all on
                      this machine now (on a busy shared machine they may not)
  one batch of 2      A and B as one batch of 2 in a single forward pass per step (what
                      batched serving does), torch using every core

Each way runs in fresh Python threads, as a server's workers do.

Reported: total time for the 2 x N steps, ms per step (total / 2N) and the ratio to one
after another; median over repetitions. This backs the forward lock (and the batching) in
docs/performance.md, "Threads".

    python -m bench.threads             # GPT-2-small shape, 2 x 32 steps, 5 repetitions
    python -m bench.threads --quick     # 2 x 16 steps, 3 repetitions
    python -m bench.threads --smoke     # the bundled model, 2 x 8 steps, 1 repetition (the test suite's)
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable

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
    synchronize,
)
from tokstep.core.model import LanguageModel

PROMPT_TOKENS = 8


@torch.inference_mode()
def decode(lm: LanguageModel, ids: list[int], steps: int, batch: int = 1, threads: int | None = None) -> None:
    """A prompt's forward pass, then `steps` cached greedy steps, for `batch` copies of the prompt."""
    if threads is not None:
        torch.set_num_threads(threads)  # per thread: torch reads it when this thread first computes
    input_ids = torch.tensor([ids] * batch, device=lm.device)
    output = lm.model(input_ids=input_ids, use_cache=True, logits_to_keep=1)
    for _ in range(steps):
        next_ids = output.logits[:, -1].argmax(dim=-1, keepdim=True)  # (batch, 1)
        output = lm.model(input_ids=next_ids, cache=output.cache, use_cache=True, logits_to_keep=1)
    output.logits[:, -1].argmax(dim=-1).tolist()  # wait for the last step (a GPU queues work)


def in_threads(*work: Callable[[], None]) -> None:
    threads = [threading.Thread(target=job) for job in work]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def ways(lm: LanguageModel, ids: list[int], steps: int, cores: int) -> dict[str, Callable[[], None]]:
    # Every way runs in fresh Python threads, as a server's workers do (the main thread's
    # OpenMP team can behave differently from a worker's).
    def one_after_another(threads: int) -> Callable[[], None]:
        return lambda: in_threads(
            lambda: (decode(lm, ids, steps, threads=threads), decode(lm, ids, steps, threads=threads))
        )

    def side_by_side(threads: int) -> Callable[[], None]:
        return lambda: in_threads(
            lambda: decode(lm, ids, steps, threads=threads), lambda: decode(lm, ids, steps, threads=threads)
        )

    return {
        "one after another": one_after_another(cores),
        "2 threads": side_by_side(cores),
        "2 threads x 1 core": side_by_side(1),
        "one after another x 1 core": one_after_another(1),
        "one batch of 2": lambda: in_threads(lambda: decode(lm, ids, steps, batch=2, threads=cores)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 x 16 steps, 3 repetitions")
    parser.add_argument("--smoke", action="store_true", help="the bundled model, 2 x 8 steps, 1 repetition")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions (median kept)")
    parser.add_argument("--steps", type=int, default=32, help="decode steps per sequence")
    parser.add_argument("--model", default=GPT2_SMALL_SHAPE, help=f"{GPT2_SMALL_SHAPE}, {BUNDLED}, ...")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: where tokstep.load puts it)")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = parser.parse_args()
    if args.smoke:
        args.model, args.steps, repeats = BUNDLED, 8, 1
    else:
        args.steps = 16 if args.quick else args.steps
        repeats = 3 if args.quick else args.repeats
    quiet_transformers()

    cores = torch.get_num_threads()  # torch's default: one thread per core it may use
    lm = build_model(args.model, args.device)
    ids = prompt_ids(lm, PROMPT_TOKENS)
    print(machine_line())
    print(f"{lm.name}; torch {torch.__version__}, {cores} threads by default; 2 sequences x {args.steps} steps")
    runs = ways(lm, ids, args.steps, cores)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for run in runs.values():
        run()  # warm-up: first-call allocations, the thread pools
    for _ in range(repeats):
        for name, run in runs.items():  # interleaved: a change in the machine's load hits every way
            synchronize(args.device)
            started = time.perf_counter()
            run()
            synchronize(args.device)
            times[name].append(time.perf_counter() - started)
    base = median(times["one after another"])
    rows = [
        [name, fmt(total * 1000, 0), fmt(total * 1000 / (2 * args.steps), 2), fmt(total / base, 2)]
        for name, total in ((name, median(values)) for name, values in times.items())
    ]
    print_table(["way", "total ms", "ms per step", "x one after another"], rows, markdown=args.markdown)
    print(
        "\nms per step: total / (2 x steps). Above 1.00 in the last column is slower than taking turns;"
        "\nthe batch reads the weights once for both sequences."
    )


if __name__ == "__main__":
    main()
