"""A tokstep server for the benchmarks, in a process of its own (bench.server and bench.classroom
start it; you do not need to). It serves `create_demo(lm)` with the app's LAUNCH_OPTIONS, default
limits, malloc arena limit and fair share per client (from the environment), exactly as `python
app.py` does, on a model the benchmarks name:

    python -m bench.serve_for_bench --model gpt2-small-shape --port 7861
    python -m bench.serve_for_bench --model tinystories --port 7861

On SIGUSR1 it runs malloc_trim and writes its RSS to --status-file, so the benchmark reads the
memory the server holds rather than pages glibc keeps around, with its model's batcher
counters (passes run, requests served, the largest batch). (No explicit garbage collection
there: a `gc.collect()` in this handler was suspected of the 60-client stall described in
bench/results/2026-11-25-epyc-classroom.md; removing it did not cure it, but a collection run from a signal handler
is not what the served app does, so it stays out.) On
SIGUSR2 it prints every thread's stack to stderr (bench.classroom asks when clients hang).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import faulthandler
import json
import os
import signal
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from bench.common import GPT2_SMALL_SHAPE, batcher_counters, build_model, proc_memory_mib, quiet_transformers

if TYPE_CHECKING:
    from tokstep.runtimes.scheduler import ForwardBatcher


def trim_and_report(status_file: Path | None, batcher: ForwardBatcher) -> None:
    with contextlib.suppress(OSError):  # not glibc: RSS is read untrimmed
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    if status_file is not None:
        status = {
            "rss_mib": proc_memory_mib(os.getpid())["VmRSS"],
            **batcher_counters(batcher),
        }
        partial = status_file.with_suffix(".partial")
        partial.write_text(json.dumps(status))
        partial.replace(status_file)  # whole or absent: the reader never sees half a file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=GPT2_SMALL_SHAPE, help=f"{GPT2_SMALL_SHAPE} or a name tokstep.load takes")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: where tokstep.load puts it)")
    parser.add_argument("--torch-threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--status-file", type=Path, default=None, help="where SIGUSR1 writes the trimmed RSS")
    args = parser.parse_args()

    from tokstep.web.client_limits import FairShare
    from tokstep.web.deployment import Tweaks, apply_process_tweaks
    from tokstep.web.page import LAUNCH_OPTIONS, create_demo

    apply_process_tweaks(Tweaks())  # as app.py does

    quiet_transformers()
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)  # the workers' passes pick it up
    lm = build_model(args.model, args.device)
    # The runtime build_model served it with, and each client's fair share from the environment, as
    # app.py reads it (bench.common.BENCH_SERVER_ENV sets it for the benchmarks).
    demo = create_demo(lm, runtime=lm.forward.runtime, fair_share=FairShare.from_env())

    def on_signal(signum: int, frame: FrameType | None) -> None:
        trim_and_report(args.status_file, lm.forward.batcher)

    # Set before launch: the benchmark may ask as soon as the page answers.
    signal.signal(signal.SIGUSR1, on_signal)
    faulthandler.register(signal.SIGUSR2, all_threads=True)
    demo.launch(server_name="127.0.0.1", server_port=args.port, prevent_thread_lock=True, quiet=True, **LAUNCH_OPTIONS)
    demo.block_thread()


if __name__ == "__main__":
    main()
