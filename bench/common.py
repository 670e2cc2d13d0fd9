"""Helpers the benchmark scripts share: the models they run, statistics, the machine they ran
on, and a tokstep server in a process of its own whose memory can be read from /proc.

Not a script: run `python -m bench.engine`, `bench.server`, `bench.classroom`, `bench.startup`,
`bench.threads`, `bench.bandwidth` or `bench.packing` from the repository root.
"""

from __future__ import annotations

import json
import math
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the server scripts' parent process never needs torch or transformers
    import torch
    from transformers import PreTrainedTokenizerBase

    from tokstep.core.model import LanguageModel
    from tokstep.runtimes.scheduler import ForwardBatcher

ROOT = Path(__file__).resolve().parents[1]
GPT2_SMALL_SHAPE = "gpt2-small-shape"  # the name the scripts and serve_for_bench take for it
BUNDLED = "tinystories"

# Benchmarks make no network calls of their own: Gradio's and the Hub's telemetry stay off,
# in this process and in the servers it starts.
QUIET_ENV = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_DISABLE_TELEMETRY": "1"}
os.environ.update(QUIET_ENV)
# The bench server stands where a Space's proxy puts a tokstep server: it trusts X-Forwarded-For,
# and the simulated clients each send an address of their own (`client_address`), so the fair
# share per client applies to each student as it would to real ones (bench.classroom's flood sends
# one address for all of one client's streams). /generate's ceiling is raised past the flood's
# 900-token streams, so that it is the caps per client that meet them.
BENCH_SERVER_ENV = {"TOKSTEP_TRUST_FORWARDED_FOR": "1", "TOKSTEP_MAX_API_TOKENS": "1000"}


def client_address(index: int) -> str:
    """The address simulated client `index` sends as its X-Forwarded-For (a private range)."""
    return f"10.{(index >> 16) & 255}.{(index >> 8) & 255}.{index & 255}"


# --- models -----------------------------------------------------------------------------


def gpt2_small_shape(tokenizer: PreTrainedTokenizerBase) -> LanguageModel:
    """GPT-2 small's shape (124M parameters, 12 layers, 768 wide, 50,257 tokens), random weights."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    import tokstep

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), bos_token_id=tokenizer.eos_token_id, eos_token_id=None)
    model = GPT2LMHeadModel(config)
    return tokstep.from_objects("gpt2-small shape (random weights)", model, tokenizer)


def build_model(name: str, device: str | None = None, pack_weights: bool = True) -> LanguageModel:
    """`gpt2-small-shape` (random weights, GPT-2's real tokenizer) or any name tokstep.load takes.

    `device` ("cpu", "cuda", ...) moves the GPT-2-small-shape model there, in bf16/fp16 on a GPU
    as tokstep.load does; a loaded model goes where tokstep.load puts it (a GPU when there is one)
    unless a device is given. The model is served as the app serves it: by the batched in-process
    runtime (`lm.forward.runtime`), its large linear layers packed on a CPU unless
    `pack_weights=False` (see tokstep.runtimes.packed_linear)."""
    import tokstep
    from tokstep.runtimes.in_process import InProcessRuntime

    if name == GPT2_SMALL_SHAPE:
        from tokstep.testing import gpt2_tokenizer

        lm = gpt2_small_shape(gpt2_tokenizer())
        if device and device != "cpu":
            lm.model.to(device=device, dtype=half_dtype(device))
    elif device:
        lm = tokstep.load(name, device_map=device, dtype=None if device == "cpu" else half_dtype(device))
    else:
        lm = tokstep.load(name)
    return InProcessRuntime(pack_weights=pack_weights).serve(lm)


def half_dtype(device: str) -> torch.dtype:
    import torch

    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def quiet_transformers() -> None:
    """No progress bars or notes from transformers (e.g. that a long text exceeds a model's
    length, which prompt_ids cuts anyway): the scripts' output is their tables."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def prompt_ids(lm: LanguageModel, length: int) -> list[int]:
    """A prompt of exactly `length` tokens of ordinary text."""
    import tokstep

    text = "Once upon a time, there was a little girl who loved to read stories about the sea. " * 64
    return tokstep.tokenize(lm.tokenizer, text)[:length]


def synchronize(device: str | None) -> None:
    """Wait for queued GPU work, so that a timer stopped after it measures the work itself."""
    if device and device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


# --- statistics and tables ----------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), interpolated between the two nearest ranks (numpy's default)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def fmt(value: float | int | str | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool = False) -> None:
    """Columns padded to their widest cell, the first left-aligned and the others right-aligned;
    with `markdown`, a table to paste into a file under bench/results/."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        padded = [
            str(cell).ljust(width) if index == 0 else str(cell).rjust(width)
            for index, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return ("| " + " | ".join(padded) + " |") if markdown else "  ".join(padded)

    print(line(headers))
    if markdown:
        print("| " + " | ".join(["-" * widths[0]] + ["-" * (width - 1) + ":" for width in widths[1:]]) + " |")
    for row in rows:
        print(line(row))
    sys.stdout.flush()


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def machine_line() -> str:
    """The CPU's model name, the cores this process may use, the load average: what a reader
    needs to judge the figures (on a shared machine, other work slows every one of them)."""
    model = platform.processor() or platform.machine()
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = " / ".join(f"{value:.2f}" for value in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return f"machine: {model}, {cores} cores; load average (1, 5, 15 min) at start: {load}"


# --- a server in its own process ------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """Whether `url` answers 200 (a GET; any error or other status is a no)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def proc_memory_mib(pid: int) -> dict[str, float]:
    """VmRSS (resident now) and VmHWM (peak resident since start or since reset_peak) of `pid`."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values


def reset_peak(pid: int) -> bool:
    """Start VmHWM again from the current RSS (Linux: writing 5 to clear_refs), so each load
    level reports its own peak; False where the kernel does not allow it."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def batcher_counters(batcher: ForwardBatcher) -> dict[str, float]:
    """A batcher's counters as a server's status reports them (see BenchServer.status): `passes`,
    `served`, `largest_batch`, `pass_seconds`."""
    return {
        "passes": batcher.counters.passes,
        "served": batcher.counters.served,
        "largest_batch": batcher.counters.largest_batch,
        "pass_seconds": batcher.counters.pass_seconds,
    }


@dataclass
class BenchServer:
    """A `python -m bench.serve_for_bench` process: its URL and pid."""

    url: str
    process: subprocess.Popen
    status_file: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def status(self, timeout: float = 30.0) -> dict[str, float]:
        """The server's RSS after malloc_trim in the server itself (`rss_mib`), and its model's
        batcher counters: `passes`, `served` (requests those passes answered), `largest_batch`,
        `pass_seconds` (wall time in those passes).

        glibc keeps freed pages in its arenas, so a plain RSS wanders by tens of MiB whatever the
        program holds; the server trims on SIGUSR1, then writes this to a file."""
        self.status_file.unlink(missing_ok=True)
        os.kill(self.pid, signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.status_file.exists():
                try:
                    return json.loads(self.status_file.read_text())
                except ValueError:
                    pass  # written but not complete yet
            time.sleep(0.05)
        raise TimeoutError("the bench server did not report its status")

    def trimmed_rss_mib(self, timeout: float = 30.0) -> float:
        """The server's RSS after malloc_trim in the server (see `status`)."""
        return self.status(timeout)["rss_mib"]


@contextmanager
def bench_server(
    model: str, device: str | None = None, torch_threads: int | None = None, timeout: float = 300.0
) -> Iterator[BenchServer]:
    """Start a tokstep server on `model` in a separate process (as deployed: its own interpreter,
    so the clients' work does not share its GIL); stop it on exit."""
    port = free_port()
    status_file = Path(f"/tmp/tokstep-bench-{os.getpid()}-{port}.json")
    command = [sys.executable, "-m", "bench.serve_for_bench", "--model", model, "--port", str(port)]
    command += ["--status-file", str(status_file)] + (["--device", device] if device else [])
    command += ["--torch-threads", str(torch_threads)] if torch_threads else []
    process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **QUIET_ENV, **BENCH_SERVER_ENV})
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + timeout
        while not http_ok(url):
            if process.poll() is not None:
                raise RuntimeError(f"the bench server exited with status {process.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the bench server did not answer within {timeout:.0f} s")
            time.sleep(0.2)
        yield BenchServer(url, process, status_file)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        status_file.unlink(missing_ok=True)
