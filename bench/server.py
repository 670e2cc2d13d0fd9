"""Server benchmark: what a `gradio_client` streaming `/generate` sees, against the engine alone.

For each model, in one run and alternating so that a change in the machine's load hits all three:
  engine   `tokstep.generate_steps(lm, prompt, top_k=5)` in this process, timed per step
  server   `Client.submit(prompt, n, api_name="/generate")` against a tokstep server started in
           its own process (`bench.serve_for_bench`: create_demo + the app's LAUNCH_OPTIONS),
           timed per streamed update as the client receives it
  page-like the same request from `bench.sse_client`, which speaks Gradio's queue protocol as the
           page's own script does (no polling), against the same server: where the two clients
           differ, the difference is the client's (on a GPU machine, `gradio_client` in this
           script received whole streams at their end, while this client, run from a process of
           its own, got each token 1-2 ms after the server yielded it; see docs/performance.md)

Per token means end to end: (time from the request to the last token) / tokens, so everything
the server adds counts, and so does `gradio_client`'s stream reader, which sleeps 50 ms whenever
no message is waiting (tokens arrive in bursts: a steady-state figure from first to last token
would be off by up to a burst over the run; the page-like client does not poll). Overhead per
token = server - engine (issue 6's target: <= 3 ms). The
engine and the server run the same weights (GPT-2-small shape is seeded) and the script checks
that both wrote the same tokens.

    python -m bench.server             # GPT-2-small shape and the bundled model, 5 repetitions
    python -m bench.server --quick     # 3 repetitions
    python -m bench.server --smoke     # the bundled model, 16 tokens, 1 repetition (the test suite's)
"""

from __future__ import annotations

import argparse
import asyncio
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx

from bench.common import (
    BUNDLED,
    GPT2_SMALL_SHAPE,
    batcher_counters,
    bench_server,
    build_model,
    fmt,
    machine_line,
    median,
    print_table,
    prompt_ids,
    quiet_transformers,
    synchronize,
    verdict,
)
from bench.sse_client import fn_index, greedy_arguments, stream_outputs

NEW_TOKENS = 128  # long enough that a 50 ms burst at the end is under 0.4 ms per token
PROMPT_TOKENS = 8
OVERHEAD_TARGET_MS = 3.0


@dataclass
class Run:
    """One generation, timed: when each token arrived (seconds after the request) and which it was."""

    arrivals: list[float]
    token_ids: list[int]

    @property
    def first_ms(self) -> float:
        return self.arrivals[0] * 1000

    @property
    def per_token_ms(self) -> float:
        return self.arrivals[-1] * 1000 / len(self.arrivals)

    @property
    def steady_ms(self) -> float:
        """From the first token to the last, per token: without the request and the prompt's pass."""
        return (self.arrivals[-1] - self.arrivals[0]) * 1000 / max(1, len(self.arrivals) - 1)


def run_engine(lm, prompt: str, n: int, device: str | None) -> Run:  # lm: tokstep.LanguageModel
    import tokstep

    arrivals, ids = [], []
    started = time.perf_counter()
    for step in tokstep.generate_steps(lm, prompt, max_new_tokens=n, top_k=5):
        synchronize(device)  # a no-op on CPU; step's Python floats already wait for a GPU
        arrivals.append(time.perf_counter() - started)
        ids.append(step.token_id)
    return Run(arrivals, ids)


def run_server(client, prompt: str, n: int) -> Run:  # client: gradio_client.Client
    arrivals, ids = [], []
    started = time.perf_counter()
    for update in client.submit(prompt, n, api_name="/generate"):
        arrivals.append(time.perf_counter() - started)
        ids.append(update["token_id"])
    return Run(arrivals, ids)


def run_page_like(url: str, event: int, prompt: str, n: int) -> Run:
    """The same request as `run_server`, from bench.sse_client (as the page's script makes it)."""

    async def stream() -> Run:
        arrivals, ids = [], []
        async with httpx.AsyncClient(timeout=None) as http:
            started = time.perf_counter()
            async for update in stream_outputs(http, url, event, greedy_arguments(prompt, n)):
                arrivals.append(time.perf_counter() - started)
                ids.append(update["token_id"])
        return Run(arrivals, ids)

    return asyncio.run(stream())


@dataclass
class PassClock:
    """Forward passes run and the time spent in them, summed over timed stretches of a run."""

    passes: int = 0
    seconds: float = 0.0

    @contextmanager
    def timing(self, read_counters: Callable[[], dict[str, float]]) -> Iterator[None]:
        """Add what a batcher's counters (`passes`, `pass_seconds`) grew by during the block."""
        before = read_counters()
        yield
        after = read_counters()
        self.passes += int(after["passes"] - before["passes"])
        self.seconds += after["pass_seconds"] - before["pass_seconds"]

    @property
    def mean_ms(self) -> float:
        return self.seconds * 1000 / self.passes if self.passes else math.nan


def bench_model(name: str, n: int, repeats: int, device: str | None, torch_threads: int | None) -> list[str]:
    from gradio_client import Client

    lm = build_model(name, device)
    prompt = lm.tokenizer.decode(prompt_ids(lm, PROMPT_TOKENS))
    engine_runs, server_runs, page_runs = [], [], []
    engine_passes, server_passes = PassClock(), PassClock()
    with bench_server(name, device, torch_threads) as server:
        client = Client(server.url, verbose=False, analytics_enabled=False)
        event = fn_index(server.url, "/generate")
        # Warm-up, untimed: first-call allocations, lazy initialisation, the clients' streams.
        run_engine(lm, prompt, n, device)
        run_server(client, prompt, n)
        run_page_like(server.url, event, prompt, n)
        for _ in range(repeats):
            with engine_passes.timing(lambda: batcher_counters(lm.forward.batcher)):
                engine_runs.append(run_engine(lm, prompt, n, device))
            with server_passes.timing(server.status):
                server_runs.append(run_server(client, prompt, n))
                page_runs.append(run_page_like(server.url, event, prompt, n))
        client.close()
    engine_ms = median([run.per_token_ms for run in engine_runs])
    server_ms = median([run.per_token_ms for run in server_runs])
    overhead = server_ms - engine_ms
    same = all(run.token_ids == engine_runs[0].token_ids for run in engine_runs + server_runs + page_runs)
    return [
        lm.name,
        str(len(server_runs[0].token_ids)),
        fmt(engine_ms, 2),
        fmt(server_ms, 2),
        fmt(overhead, 2),
        fmt(1000 / engine_ms),
        fmt(1000 / server_ms),
        fmt(engine_ms / server_ms, 3),
        fmt(median([run.first_ms for run in engine_runs])),
        fmt(median([run.first_ms for run in server_runs])),
        fmt(median([run.steady_ms for run in server_runs]), 2),
        fmt(median([run.per_token_ms for run in page_runs]), 2),
        fmt(median([run.first_ms for run in page_runs])),
        fmt(engine_passes.mean_ms, 2),
        fmt(server_passes.mean_ms, 2),
        "yes" if same else "NO",
        verdict(overhead <= OVERHEAD_TARGET_MS),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 repetitions")
    parser.add_argument("--smoke", action="store_true", help="the bundled model only, 16 tokens, 1 repetition")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions per model (median kept)")
    parser.add_argument("--tokens", type=int, default=NEW_TOKENS, help="new tokens per request")
    parser.add_argument("--models", nargs="+", default=[GPT2_SMALL_SHAPE, BUNDLED], help="models to run")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: where tokstep.load puts it)")
    parser.add_argument("--torch-threads", type=int, default=None, help="torch threads, here and in the server")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = parser.parse_args()
    repeats = 1 if args.smoke else 3 if args.quick else args.repeats
    models = [BUNDLED] if args.smoke else args.models
    n = 16 if args.smoke else args.tokens

    quiet_transformers()
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)  # the engine alone runs as the server does
    print(machine_line())
    threads = args.torch_threads or "torch's default"
    print(f"{repeats} repetitions (median), prompt of {PROMPT_TOKENS} tokens, {n} new tokens, greedy, top-k 5")
    print(f"torch threads (engine and server): {threads}")
    headers = [
        "model", "tokens", "engine ms/tok", "server ms/tok", "overhead ms/tok", "engine tok/s", "server tok/s",
        "server/engine", "engine 1st ms", "server 1st ms", "server steady", "page-like ms/tok", "page-like 1st ms",
        "engine pass ms", "server pass ms", "same tokens",
        f"overhead <= {OVERHEAD_TARGET_MS:g} ms",
    ]  # fmt: skip
    rows = []
    for name in models:
        rows.append(bench_model(name, n, repeats, args.device, args.torch_threads))
    print_table(headers, rows, markdown=args.markdown)
    print(
        "\nms/tok: from the request to the last token, per token, as the client receives them."
        "\noverhead: server - engine per token (issue 6's target: <= 3 ms); server/engine: the share of the"
        "\nengine's speed a streaming client sees. 1st ms: from the request to the first token. server steady:"
        "\n(last token - first token) / (tokens - 1) at the client (bursty: gradio_client's reader polls every 50 ms)."
        "\npage-like: the same request from a client that speaks the queue protocol as the page does;"
        "\npass ms: the mean forward pass (summaries included) in the engine's runs and in the server's, from each"
        "\nmodel's batcher: server pass - engine pass is the part of the overhead spent in slower passes (the"
        "\nserver's and the clients' work sharing the cores with them), the rest is spent between passes;"
        "\nsame tokens: the engine and both clients got the same tokens."
    )


if __name__ == "__main__":
    main()
