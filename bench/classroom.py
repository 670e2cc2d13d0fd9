"""A class at once, on every serving path side by side, and a class under one client's flood.

The server is the app as deployed (`create_demo(lm)` with LAUNCH_OPTIONS and default limits) in a
process of its own (`bench.serve_for_bench`), on GPT-2-small shape (random weights: GPT-2's
compute). It trusts X-Forwarded-For, as behind a Space's proxy, and every simulated client sends
an address of its own, so the fair share per client applies to each as to a student.

By default, in one run (alternated within each repetition, so a change in the machine's load hits
every path alike), 10, 30 and 60 clients each ask for 32 tokens at the same moment:

  engine         tokstep's engine alone: a thread per client stepping the model in this process
                 (the batched runtime, top-k 5, as /generate steps it), no server
  stream         the server's plain server-sent events route (POST /stream/generate)
  sse            the server's /generate through Gradio's queue, spoken as the page's own script
                 speaks it (`bench.sse_client`: join, then read the server-sent events; no polling)
  gradio_client  the same /generate through `gradio_client.Client`, a thread each (heavier on the
                 shared CPU, and its reader polls every 50 ms, which shows in the gaps)

with each path's wall time and p95 gap as ratios to the engine alone, and issue 22's targets for
the plain route. Then the flood: 30 clients (each 32 tokens) alone, and the same class starting
while one client keeps 80 /generate streams of 900 tokens going (from one address, a second
ahead), with the class's time to first token, how many of the flood's streams were refused and
with what message, and the server's RSS before and after.

`--client X` runs the older single-path table instead: `sse`, `stream`, `gradio_client`, or `page`
(each client a page pressing Auto-run: the page's `/autorun` event at `--speed` tokens per second,
the page's default 3; what a class of students in browser tabs asks of the server, each update a
whole page view), with issue 6's targets. Per client: time to the first token, the times between
tokens, time to the 32nd token. Reported, median over repetitions:

  TTFT p50/p95       time to first token, across clients
  gap p50/p95        time between consecutive tokens, all clients' gaps pooled
  t32 p50/p95        time to the last (32nd) token, across the clients that got all of them
  wall               from the release to the last token any client received
  tok/s              all tokens received / wall
  mean batch         requests the server's forward passes answered during the level / passes
  pass ms            the server's mean wall time per forward pass during the level
  refused / failed   "Queue is full" is a graceful refusal; anything else (an exception, a
                     stream that ends early, a client still waiting at the deadline) a failure
  peak / after MiB   the server's VmHWM during the level (reset before it) and its RSS once the
                     clients have closed (after malloc_trim in the server)

then the memory one idle session holds: the server's RSS growth over N sessions that each made
one short call, divided by N (API sessions via /generate; page sessions via the page's own
/reset event, as a browser tab makes them), after 64 such sessions that are not measured (they
push the levels' sequences, whose KV caches the server keeps warm, out first).

    python -m bench.classroom              # every path at 10, 30, 60 clients, 3 repetitions, and the flood
    python -m bench.classroom --quick      # 1 repetition
    python -m bench.classroom --smoke      # 3 clients, 8 tokens, the bundled model (the test suite's)
    python -m bench.classroom --client sse                # the single-path table, issue 6's targets
    python -m bench.classroom --client page --levels 30   # 30 page Auto-runs at the page's default speed
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx

import tokstep
from bench.common import (
    BUNDLED,
    GPT2_SMALL_SHAPE,
    BenchServer,
    bench_server,
    build_model,
    client_address,
    fmt,
    machine_line,
    median,
    percentile,
    print_table,
    proc_memory_mib,
    reset_peak,
    verdict,
)
from bench.sse_client import fn_index, greedy_arguments, stream_outputs
from tokstep.core.model import LanguageModel
from tokstep.core.stepper import STOP_REASON_TEXT
from tokstep.runtimes.warm_set import DEFAULT_WARM_SEQUENCES
from tokstep.web.api import API_TOP_K
from tokstep.web.constants import DEFAULT_SPEED
from tokstep.web.settings import page_arguments
from tokstep.web.stream_route import PATH as STREAM_PATH
from tokstep.web.views import VIEW_OUTPUTS

LEVELS = (10, 30, 60)
TOKENS = 32
PROMPT = "Once upon a time, there was a little girl who"
DEADLINE_S = 600.0  # a client still waiting after this is a failure (and the level ends)
CALL_TIMEOUT_S = 120.0  # one short call while measuring idle sessions
WARM_UP_SESSIONS = 2 * DEFAULT_WARM_SEQUENCES  # before measuring idle sessions (see idle_session_mib)
# Issue 6's targets for 30 clients.
TARGET_CLIENTS = 30
TTFT_TARGET_S, GAP_TARGET_S, LAST_TARGET_S = 2.0, 0.250, 10.0
# The page's default settings as its events take them, after their other inputs (in the page's order,
# which tokstep.web.settings knows): for page Auto-runs and for measuring a page session's memory.
PAGE_SETTINGS = page_arguments()
PAGE_STATUS_OUTPUT = VIEW_OUTPUTS.index("status")  # the page's status line, among an update's outputs


@dataclass
class ClientResult:
    started: float = 0.0  # perf_counter when this client sent its request
    arrivals: list[float] = field(default_factory=list)  # perf_counter of each update
    stop_reason: str | None = None
    error: str | None = None

    def outcome(self, tokens: int) -> str:
        """ok, refused (the queue's graceful "Queue is full") or failed."""
        if self.error is not None:
            return "refused" if "Queue is full" in self.error else "failed"
        if len(self.arrivals) == tokens or self.stop_reason in ("end_of_text", "context_full"):
            return "ok"
        return "failed"


@dataclass
class LevelResult:
    clients: int
    results: list[ClientResult]
    peak_mib: float
    before_mib: float
    after_mib: float
    passes: int = 0  # forward passes the server ran during the level
    served: int = 0  # requests those passes answered: served / passes is the mean batch
    pass_seconds: float = 0.0  # wall time the server spent in those passes

    def failures(self, tokens: int) -> str:
        """The distinct reasons clients failed, with counts (empty when none did)."""
        reasons = Counter(
            (r.error or f"stream ended after {len(r.arrivals)} tokens")[:120]
            for r in self.results
            if r.outcome(tokens) == "failed"
        )
        return "; ".join(f"{count} x {reason}" for reason, count in reasons.most_common(3))

    def stats(self, tokens: int) -> dict[str, float]:
        served = [r for r in self.results if r.arrivals]
        ttft = [r.arrivals[0] - r.started for r in served]
        gaps = [later - earlier for r in served for earlier, later in zip(r.arrivals, r.arrivals[1:], strict=False)]
        last = [r.arrivals[-1] - r.started for r in served if len(r.arrivals) == tokens]
        outcomes = [r.outcome(tokens) for r in self.results]
        start = min((r.started for r in self.results if r.started), default=0.0)
        end = max((r.arrivals[-1] for r in served), default=start)
        received = sum(len(r.arrivals) for r in self.results)
        return {
            "ttft_p50": percentile(ttft, 50),
            "ttft_p95": percentile(ttft, 95),
            "gap_p50": percentile(gaps, 50),
            "gap_p95": percentile(gaps, 95),
            "last_p50": percentile(last, 50),
            "last_p95": percentile(last, 95),
            "tok_s": received / (end - start) if end > start else float("nan"),
            "wall": end - start,  # from the release to the last token anyone received
            "min_updates": min((len(r.arrivals) for r in self.results), default=0),
            "ok": outcomes.count("ok"),
            "refused": outcomes.count("refused"),
            "failed": outcomes.count("failed"),
            "peak": self.peak_mib,
            "before": self.before_mib,
            "after": self.after_mib,
            "mean_batch": self.served / self.passes if self.passes else float("nan"),
            "pass_ms": self.pass_seconds / self.passes * 1000 if self.passes else float("nan"),
        }


def new_client(url: str, address: str | None = None):  # -> gradio_client.Client
    from gradio_client import Client

    headers = {"X-Forwarded-For": address} if address else None
    return Client(url, verbose=False, analytics_enabled=False, headers=headers)


def one_client(client, barrier: threading.Barrier, tokens: int, result: ClientResult) -> None:
    barrier.wait()
    result.started = time.perf_counter()
    try:
        for update in client.submit(PROMPT, tokens, api_name="/generate"):
            result.arrivals.append(time.perf_counter())
            result.stop_reason = update.get("stop_reason")
    except Exception as error:  # the client raises its own types (QueueError, AppError, ...): all are outcomes
        result.error = f"{type(error).__name__}: {error}"


@dataclass(frozen=True)
class Request:
    """What a client sends, and how it reads each streamed update."""

    api_name: str
    arguments: list[Any]
    output_index: int  # the output it reads from each update
    stop_reason: Callable[[Any], str | None]  # that output -> why the run stopped, if it did


def generate_request(tokens: int) -> Request:
    """`/generate` at full speed, as an API client calls it."""
    return Request("/generate", greedy_arguments(PROMPT, tokens), 0, lambda update: update.get("stop_reason"))


def page_autorun_request(tokens: int, speed: float) -> Request:
    """The page's Auto-run at `speed` tokens per second, as a browser tab sends it: the session's
    state and model first (None: the server keeps them; the page creates them first, and Gradio sends
    an event's inputs in the order they were created), then the prompt, the count, the speed and the
    page's settings. It reads the status line, which says when and why a run stopped."""
    arguments = [None, None, PROMPT, tokens, speed, *PAGE_SETTINGS]
    return Request("/autorun", arguments, PAGE_STATUS_OUTPUT, page_stop_reason)


def page_stop_reason(status: Any) -> str | None:
    """Why the page's run stopped, as its status line says ("**Stopped:** ..."), or None."""
    if not isinstance(status, str):
        return None
    return next((reason for reason, text in STOP_REASON_TEXT.items() if f"**Stopped:** {text}" in status), None)


async def one_sse_client(
    http: httpx.AsyncClient, url: str, event: int, request: Request, start: asyncio.Event, result: ClientResult
) -> None:
    await start.wait()
    result.started = time.perf_counter()
    try:
        async for update in stream_outputs(http, url, event, request.arguments, output_index=request.output_index):
            result.arrivals.append(time.perf_counter())
            result.stop_reason = request.stop_reason(update)
    except Exception as error:  # QueueFullError, JobError, a dropped connection: all are outcomes
        result.error = f"{type(error).__name__}: {error}"


async def one_stream_client(
    http: httpx.AsyncClient, url: str, body: dict[str, Any], start: asyncio.Event, result: ClientResult
) -> None:
    """A client of the plain server-sent events route (tokstep.web.stream_route): one POST, then
    one `data:` line per token."""
    await start.wait()
    result.started = time.perf_counter()
    try:
        async with http.stream("POST", f"{url.rstrip('/')}{STREAM_PATH}", json=body) as response:
            if response.status_code != 200:
                answer = json.loads(await response.aread())
                result.error = f"HTTP {response.status_code}: {answer.get('error')}"
                return
            event = None
            async for line in response.aiter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data = json.loads(line[5:])
                    if event is None:
                        result.arrivals.append(time.perf_counter())
                        result.stop_reason = data.get("stop_reason")
                    elif event == "error":
                        result.error = str(data.get("error"))
                    event = None
    except Exception as error:  # a dropped connection, a refusal: all are outcomes
        result.error = f"{type(error).__name__}: {error}"


def run_sse_clients(url: str, request: Request, results: list[ClientResult], deadline_s: float) -> None:
    """Gradio's queue clients, as the page speaks it (bench.sse_client), all released at once."""
    event = fn_index(url, request.api_name)
    run_async_clients(
        lambda http, start, result: one_sse_client(http, url, event, request, start, result), results, deadline_s
    )


def run_stream_clients(url: str, tokens: int, results: list[ClientResult], deadline_s: float) -> None:
    """Clients of the plain server-sent events route, all released at once."""
    body = {"prompt": PROMPT, "max_new_tokens": tokens}
    run_async_clients(
        lambda http, start, result: one_stream_client(http, url, body, start, result), results, deadline_s
    )


def run_engine_alone(lm: LanguageModel, tokens: int, results: list[ClientResult], deadline_s: float) -> None:
    """No server: a thread per client stepping the model in this process, as /generate steps it
    (the batched runtime, top-k 5), released by a barrier. What a serving path adds is measured
    against this."""
    barrier = threading.Barrier(len(results))

    def one(result: ClientResult) -> None:
        barrier.wait()
        result.started = time.perf_counter()
        try:
            for step in tokstep.generate_steps(lm, PROMPT, max_new_tokens=tokens, top_k=API_TOP_K):
                result.arrivals.append(time.perf_counter())
                result.stop_reason = step.stop_reason
        except Exception as error:  # noqa: BLE001 - every failure is an outcome
            result.error = f"{type(error).__name__}: {error}"

    run_threads([threading.Thread(target=one, args=(result,), daemon=True) for result in results], results, deadline_s)


def run_threads(threads: list[threading.Thread], results: list[ClientResult], deadline_s: float) -> None:
    """Start one thread per client and wait for them; a client still going at the deadline fails."""
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + deadline_s
    for thread, result in zip(threads, results, strict=True):
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
        if thread.is_alive() and result.error is None:
            result.error = f"still waiting after {deadline_s:.0f} s"


ClientTask = Callable[[httpx.AsyncClient, asyncio.Event, ClientResult], Any]


async def wait_for_clients(tasks: list[asyncio.Task], results: list[ClientResult], deadline_s: float) -> None:
    """Wait for the clients' tasks until the deadline; one still going then is cancelled and fails."""
    _, pending = await asyncio.wait(tasks, timeout=deadline_s)
    for task, result in zip(tasks, results, strict=True):
        if task in pending:
            task.cancel()
            result.error = f"still waiting after {deadline_s:.0f} s"


def run_async_clients(client: ClientTask, results: list[ClientResult], deadline_s: float) -> None:
    """Every client at the same moment, in one asyncio loop; a client still going at the deadline fails."""

    async def level() -> None:
        start = asyncio.Event()
        # A connection pool per client, as each student's browser has its own.
        # Each from an address of its own, as students are (the bench server trusts X-Forwarded-For).
        https = [
            httpx.AsyncClient(timeout=httpx.Timeout(deadline_s), headers={"X-Forwarded-For": client_address(i)})
            for i in range(len(results))
        ]
        tasks = [asyncio.create_task(client(http, start, result)) for http, result in zip(https, results, strict=True)]
        start.set()
        await wait_for_clients(tasks, results, deadline_s)
        await asyncio.gather(*tasks, return_exceptions=True)
        for http in https:
            await http.aclose()

    asyncio.run(level())


def run_gradio_clients(url: str, results: list[ClientResult], tokens: int, deadline_s: float) -> None:
    """A thread per client, each with its own gradio_client.Client, released by a barrier."""
    # Clients connect (config, API info, heartbeat) before the barrier: only the requests are timed.
    with ThreadPoolExecutor(max_workers=8) as pool:
        clients = list(pool.map(lambda i: new_client(url, client_address(i)), range(len(results))))
    barrier = threading.Barrier(len(results))
    threads = [
        threading.Thread(target=one_client, args=(client, barrier, tokens, result), daemon=True)
        for client, result in zip(clients, results, strict=True)
    ]
    run_threads(threads, results, deadline_s)
    for client in clients:
        client.close()


def run_level(
    server: BenchServer,
    n_clients: int,
    tokens: int,
    deadline_s: float = DEADLINE_S,
    client: str = "sse",
    speed: float = DEFAULT_SPEED,
) -> LevelResult:
    """`n_clients` at once: /generate from sse or gradio_client clients, or the page's Auto-run at `speed`."""
    before = server.status()
    reset_peak(server.pid)
    results = [ClientResult() for _ in range(n_clients)]
    if client == "gradio_client":
        run_gradio_clients(server.url, results, tokens, deadline_s)
    elif client == "stream":
        run_stream_clients(server.url, tokens, results, deadline_s)
    else:
        request = page_autorun_request(tokens, speed) if client == "page" else generate_request(tokens)
        run_sse_clients(server.url, request, results, deadline_s)
    stuck = [result for result in results if result.error and result.error.startswith("still waiting")]
    if stuck:
        # Where the server is, for whoever debugs it: its threads' stacks go to its stderr (ours).
        print(
            f"  {len(stuck)} of {n_clients} clients still waiting; the server's threads:", file=sys.stderr, flush=True
        )
        os.kill(server.pid, signal.SIGUSR2)
        time.sleep(2.0)
    peak = proc_memory_mib(server.pid)["VmHWM"]
    time.sleep(1.0)  # let the server notice the closed heartbeats
    after = server.status()
    return LevelResult(
        n_clients,
        results,
        peak,
        before["rss_mib"],
        after["rss_mib"],
        passes=int(after["passes"] - before["passes"]),
        served=int(after["served"] - before["served"]),
        pass_seconds=after["pass_seconds"] - before["pass_seconds"],
    )


# The serving paths `--compare` measures side by side, in this order within each repetition.
PATHS = {
    "engine": "tokstep's engine alone (threads in this process, no server)",
    "stream": f"the server, plain server-sent events ({STREAM_PATH})",
    "sse": "the server, Gradio's queue as the page speaks it (/generate)",
    "gradio_client": "the server, gradio_client (/generate)",
}
# Issue 22's targets for the plain route against the engine alone.
WALL_RATIO_TARGET, GAP_RATIO_TARGET = 1.2, 1.5


def run_path(
    path: str, lm: LanguageModel, server: BenchServer, n_clients: int, tokens: int, deadline_s: float
) -> dict[str, float]:
    """One level on one serving path: the clients' stats (the reasons of any failures printed)."""
    if path != "engine":
        level = run_level(server, n_clients, tokens, deadline_s, path)
    else:
        results = [ClientResult() for _ in range(n_clients)]
        run_engine_alone(lm, tokens, results, deadline_s)
        level = LevelResult(n_clients, results, float("nan"), float("nan"), float("nan"))
    if level.failures(tokens):
        print(f"  {n_clients} clients, {path}, failures: {level.failures(tokens)}", flush=True)
    return level.stats(tokens)


# The flood: one client (one address) keeps this many /generate streams of this many tokens going,
# started this long before a class of FLOOD_CLASS clients; issue 22's targets for the class.
FLOOD_STREAMS, FLOOD_TOKENS, FLOOD_HEAD_START_S = 80, 900, 1.0
FLOOD_ADDRESS = "192.0.2.1"  # one address for all of the flood (a documentation range: no student's)
FLOOD_CLASS = 30
FLOOD_TTFT_TARGET_S, FLOOD_TTFT_RATIO_TARGET = 2.0, 2.0


@dataclass
class FloodResult:
    alone: dict[str, float]  # the class's stats without the flood
    flooded: dict[str, float]  # the class's stats while the flood runs
    flood: list[ClientResult]  # the flood's streams
    rss_before_mib: float
    rss_after_mib: float

    def refusals(self) -> Counter[str]:
        return Counter((r.error or "")[:160] for r in self.flood if r.error and not r.arrivals)


def run_class_under_flood(
    server: BenchServer, class_size: int, tokens: int, streams: int, stream_tokens: int, deadline_s: float
) -> tuple[list[ClientResult], list[ClientResult]]:
    """`streams` /generate streams from FLOOD_ADDRESS, then (FLOOD_HEAD_START_S later) a class of
    `class_size` from addresses of their own; the flood is closed once the class is done."""
    event = fn_index(server.url, "/generate")
    class_request = generate_request(tokens)
    flood_request = Request(
        "/generate", greedy_arguments(PROMPT, stream_tokens), 0, lambda update: update.get("stop_reason")
    )
    students = [ClientResult() for _ in range(class_size)]
    flood = [ClientResult() for _ in range(streams)]

    async def scenario() -> None:
        timeout = httpx.Timeout(deadline_s)
        flooder = httpx.AsyncClient(
            timeout=timeout, headers={"X-Forwarded-For": FLOOD_ADDRESS}, limits=httpx.Limits(max_connections=None)
        )
        https = [
            httpx.AsyncClient(timeout=timeout, headers={"X-Forwarded-For": client_address(i)})
            for i in range(class_size)
        ]
        flood_start, class_start = asyncio.Event(), asyncio.Event()
        flood_tasks = [
            asyncio.create_task(one_sse_client(flooder, server.url, event, flood_request, flood_start, result))
            for result in flood
        ]
        flood_start.set()
        await asyncio.sleep(FLOOD_HEAD_START_S)
        class_tasks = [
            asyncio.create_task(one_sse_client(http, server.url, event, class_request, class_start, result))
            for http, result in zip(https, students, strict=True)
        ]
        class_start.set()
        await wait_for_clients(class_tasks, students, deadline_s)
        for task in flood_tasks:
            task.cancel()  # the flood's streams close: the server ends their runs
        await asyncio.gather(*class_tasks, *flood_tasks, return_exceptions=True)
        for http in (flooder, *https):
            await http.aclose()

    asyncio.run(scenario())
    return students, flood


def run_flood(
    server: BenchServer, class_size: int, tokens: int, streams: int, stream_tokens: int, deadline_s: float
) -> FloodResult:
    """The class alone, then the class under the flood, with the server's RSS around the flood."""
    alone = run_level(server, class_size, tokens, deadline_s, "sse").stats(tokens)
    before = server.status()["rss_mib"]
    students, flood = run_class_under_flood(server, class_size, tokens, streams, stream_tokens, deadline_s)
    time.sleep(1.0)  # the server notices the closed streams
    after = server.status()["rss_mib"]
    flooded = LevelResult(class_size, students, float("nan"), before, after).stats(tokens)
    return FloodResult(alone, flooded, flood, before, after)


def report_flood(results: list[FloodResult], class_size: int, tokens: int, streams: int, stream_tokens: int) -> None:
    print(
        f"\nthe flood: one client keeps {streams} /generate streams of {stream_tokens} tokens going (one address,"
        f" {FLOOD_HEAD_START_S:g} s ahead); a class of {class_size} asks for {tokens} tokens each"
    )
    alone_p95 = median([r.alone["ttft_p95"] for r in results])
    flooded_p95 = median([r.flooded["ttft_p95"] for r in results])
    served = min(int(r.flooded["ok"]) for r in results)
    refused = median([float(sum(r.refusals().values())) for r in results])
    streamed = median([float(sum(1 for f in r.flood if f.arrivals)) for r in results])
    rows = [
        ["class alone", fmt(median([r.alone["ttft_p50"] for r in results]), 2), fmt(alone_p95, 2),
         fmt(median([r.alone["gap_p95"] for r in results]) * 1000, 0), str(int(min(r.alone["ok"] for r in results)))],
        ["class under the flood", fmt(median([r.flooded["ttft_p50"] for r in results]), 2), fmt(flooded_p95, 2),
         fmt(median([r.flooded["gap_p95"] for r in results]) * 1000, 0), str(served)],
    ]  # fmt: skip
    print_table(["", "TTFT p50 s", "TTFT p95 s", "gap p95 ms", f"served of {class_size}"], rows)
    print(f"the flood's streams: {streamed:.0f} streamed, {refused:.0f} refused at once")
    for message, count in results[-1].refusals().most_common(2):
        print(f"  {count} x {message}")
    before = median([r.rss_before_mib for r in results])
    after = median([r.rss_after_mib for r in results])
    print(f"server RSS before the flood {before:.0f} MiB, after it {after:.0f} MiB ({after - before:+.0f} MiB)")
    told = all(any("retry" in message.lower() for message in r.refusals()) for r in results)
    checks = [
        ("every student is served", f"{served} of {class_size}", served == class_size),
        (f"class TTFT p95 <= {FLOOD_TTFT_TARGET_S:g} s", f"{flooded_p95:.2f} s", flooded_p95 <= FLOOD_TTFT_TARGET_S),
        (f"class TTFT p95 <= {FLOOD_TTFT_RATIO_TARGET:g} x alone", f"{flooded_p95 / alone_p95:.2f} x",
         flooded_p95 <= FLOOD_TTFT_RATIO_TARGET * alone_p95),
        ("the flood is told it is over its cap", f"{refused:.0f} refused", told),
    ]  # fmt: skip
    print("issue 22 targets under the flood:")
    for name, value, ok in checks:
        print(f"  {name:<36} {value:>14}  {verdict(ok)}")


def compare_paths(args: argparse.Namespace, repeats: int) -> None:
    """Every path of PATHS at each level, alternated within each repetition; medians and ratios."""
    print(f"model {args.model}; each client asks for {args.tokens} tokens; {repeats} repetition(s), median")
    for path, what in PATHS.items():
        print(f"  {path:<14} {what}")
    lm = build_model(args.model, args.device)  # the engine alone: the same weights as the server's
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    measured: dict[tuple[int, str], list[dict[str, float]]] = {}
    floods: list[FloodResult] = []
    with bench_server(args.model, args.device, args.torch_threads) as server:
        list(tokstep.generate_steps(lm, PROMPT, max_new_tokens=2))  # first passes, untimed
        warm = new_client(server.url)
        list(warm.submit(PROMPT, 2, api_name="/generate"))
        warm.close()
        for _ in range(repeats):
            for n in args.levels:
                for path in PATHS:
                    stats = run_path(path, lm, server, n, args.tokens, args.deadline)
                    measured.setdefault((n, path), []).append(stats)
                    print(
                        f"  {n} clients, {path}: wall {stats['wall']:.2f} s, {stats['tok_s']:.0f} tok/s,"
                        f" gap p95 {stats['gap_p95'] * 1000:.0f} ms, TTFT p95 {stats['ttft_p95']:.2f} s,"
                        f" {stats['ok']} ok, {stats['failed']} failed, fewest updates {stats['min_updates']}",
                        flush=True,
                    )
            flood = run_flood(
                server, args.flood_class, args.tokens, args.flood_streams, args.flood_tokens, args.deadline
            )
            floods.append(flood)
            print(
                f"  the flood: class TTFT p95 {flood.alone['ttft_p95']:.2f} s alone,"
                f" {flood.flooded['ttft_p95']:.2f} s under it; {int(flood.flooded['ok'])} of {args.flood_class} served;"
                f" {sum(flood.refusals().values())} of the flood's {args.flood_streams} refused",
                flush=True,
            )

    def med(n: int, path: str, key: str) -> float:
        return median([stats[key] for stats in measured[(n, path)]])

    headers = ["clients", "path", "wall s", "tok/s", "TTFT p95 s", "gap p50 ms", "gap p95 ms",
               "wall / engine", "gap p95 / engine", "ok", "failed", "fewest updates"]  # fmt: skip
    rows = [
        [
            str(n), path, fmt(med(n, path, "wall"), 2), fmt(med(n, path, "tok_s")), fmt(med(n, path, "ttft_p95"), 2),
            fmt(med(n, path, "gap_p50") * 1000, 0), fmt(med(n, path, "gap_p95") * 1000, 0),
            fmt(med(n, path, "wall") / med(n, "engine", "wall"), 2),
            fmt(med(n, path, "gap_p95") / med(n, "engine", "gap_p95"), 2),
            str(int(sum(s["ok"] for s in measured[(n, path)]))),
            str(int(sum(s["failed"] for s in measured[(n, path)]))),
            str(int(min(s["min_updates"] for s in measured[(n, path)]))),
        ]
        for n in args.levels
        for path in PATHS
    ]  # fmt: skip
    print()
    print_table(headers, rows, markdown=args.markdown)
    # The targets are for 30 clients; a run without that level (--smoke) checks the levels it ran.
    checked = [TARGET_CLIENTS] if TARGET_CLIENTS in args.levels else args.levels
    print(f"\nissue 22 targets, the plain route against the engine alone ({args.tokens} tokens each):")
    for n in checked:
        wall = med(n, "stream", "wall") / med(n, "engine", "wall")
        gap = med(n, "stream", "gap_p95") / med(n, "engine", "gap_p95")
        fewest = min(s["min_updates"] for s in measured[(n, "stream")])
        errors = sum(s["failed"] + s["refused"] for s in measured[(n, "stream")])
        checks = [
            (f"wall <= {WALL_RATIO_TARGET:g} x the engine's", f"{wall:.2f} x", wall <= WALL_RATIO_TARGET),
            (f"gap p95 <= {GAP_RATIO_TARGET:g} x the engine's", f"{gap:.2f} x", gap <= GAP_RATIO_TARGET),
            (f"every client got {args.tokens} updates", f"fewest {fewest}", fewest >= args.tokens),
            ("no errors", f"{errors}", errors == 0),
        ]
        for name, value, ok in checks:
            print(f"  {n} clients: {name:<34} {value:>12}  {verdict(ok)}")
    report_flood(floods, args.flood_class, args.tokens, args.flood_streams, args.flood_tokens)


def idle_session_mib(server: BenchServer, sessions: int, warm_up: int) -> tuple[float | None, float | None, str]:
    """RSS growth per session over `sessions` API sessions (one short /generate each) and page
    sessions (the page's /reset event: a stepper with its KV cache in the session's state), each
    kind after `warm_up` sessions of it that are not measured."""
    client = new_client(server.url)
    api: float | None = None
    page: float | None = None
    note = ""

    def growth_per_session(call: Callable[[], Any]) -> float:
        # Sessions first, unmeasured: they push the levels' sequences out of the warm set (the KV
        # caches of the DEFAULT_WARM_SEQUENCES most recent ones stay), whose release would
        # otherwise count against the sessions measured (it showed as -4 MiB per session).
        for _ in range(warm_up):
            client.reset_session()  # a new session id, as a new client or browser tab gets
            call()
        before = server.trimmed_rss_mib()
        for _ in range(sessions):
            client.reset_session()
            call()
        return (server.trimmed_rss_mib() - before) / sessions

    try:
        api = growth_per_session(lambda: client.submit(PROMPT, 2, api_name="/generate").result(timeout=CALL_TIMEOUT_S))
    except Exception as error:  # e.g. a server that stopped answering during the levels
        note = f" (API sessions not measured: {type(error).__name__}: {error})"
    try:
        page = growth_per_session(
            lambda: client.submit(PROMPT, *PAGE_SETTINGS, api_name="/reset").result(timeout=CALL_TIMEOUT_S)
        )
    except Exception as error:  # the page's events are not a public API: they may change
        note += f" (page sessions not measured: /reset answered {type(error).__name__}: {error})"
    client.close()
    return api, page, note


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 repetition, 30 idle sessions")
    parser.add_argument("--smoke", action="store_true", help="3 clients, 8 tokens, the bundled model, 5 sessions")
    parser.add_argument("--repeats", type=int, default=3, help="repetitions of each level (median kept)")
    parser.add_argument("--levels", type=int, nargs="+", default=list(LEVELS), help="numbers of clients")
    parser.add_argument("--tokens", type=int, default=TOKENS, help="tokens each client asks for")
    parser.add_argument("--sessions", type=int, default=100, help="idle sessions for the memory per session")
    parser.add_argument("--deadline", type=float, default=DEADLINE_S, help="seconds a level may take")
    parser.add_argument("--model", default=GPT2_SMALL_SHAPE, help=f"{GPT2_SMALL_SHAPE}, {BUNDLED}, ...")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: where tokstep.load puts it)")
    parser.add_argument("--torch-threads", type=int, default=None, help="torch threads in the server")
    parser.add_argument(
        "--client", choices=("sse", "stream", "gradio_client", "page"), default=None,
        help="one path only, the single-path table (see above); default: every path side by side, and the flood",
    )  # fmt: skip
    parser.add_argument(
        "--speed", type=float, default=DEFAULT_SPEED, help="with --client page: Auto-run's tokens per second"
    )
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument("--flood-class", type=int, default=FLOOD_CLASS, help="the class under the flood")
    parser.add_argument("--flood-streams", type=int, default=FLOOD_STREAMS, help="the flooding client's streams")
    parser.add_argument("--flood-tokens", type=int, default=FLOOD_TOKENS, help="tokens each flood stream asks for")
    args = parser.parse_args()
    if args.smoke:
        args.levels, args.tokens, args.model, args.sessions, repeats = [3], 8, BUNDLED, 5, 1
        args.flood_class, args.flood_streams, args.flood_tokens = 3, 8, 100
    else:
        repeats = 1 if args.quick else args.repeats
        args.sessions = 30 if args.quick else args.sessions

    print(machine_line())
    if args.client is None:
        compare_paths(args, repeats)
        return
    asks = (
        f"presses the page's Auto-run for {args.tokens} tokens at {args.speed:g} tokens/s"
        if args.client == "page"
        else f"asks /generate for {args.tokens} tokens"
    )
    print(f"model {args.model}; each client {asks}; {repeats} repetition(s), median; clients: {args.client}")
    print(f"torch threads in the server: {args.torch_threads or 'torch default (one per core)'}")
    levels: dict[int, list[dict[str, float]]] = {n: [] for n in args.levels}
    with bench_server(args.model, args.device, args.torch_threads) as server:
        idle = server.trimmed_rss_mib()
        warm = new_client(server.url)
        list(warm.submit(PROMPT, 2, api_name="/generate"))  # the server's first forward pass, untimed
        warm.close()
        for _ in range(repeats):
            for n in args.levels:
                level = run_level(server, n, args.tokens, args.deadline, args.client, args.speed)
                stats = level.stats(args.tokens)
                levels[n].append(stats)
                if level.failures(args.tokens):
                    print(f"  {n} clients, failures: {level.failures(args.tokens)}", flush=True)
                # A line per level as it ends: a run cut short still says what it saw.
                print(
                    f"  {n} clients: {stats['ok']} ok, {stats['refused']} refused, {stats['failed']} failed;"
                    f" TTFT p95 {stats['ttft_p95']:.2f} s, gap p95 {stats['gap_p95'] * 1000:.0f} ms,"
                    f" t{args.tokens} p95 {stats['last_p95']:.2f} s, {stats['tok_s']:.1f} tok/s,"
                    f" mean batch {stats['mean_batch']:.1f}, mean pass {stats['pass_ms']:.0f} ms,"
                    f" peak {stats['peak']:.0f} MiB",
                    flush=True,
                )
        # The smoke run only checks that the tables come out: no warm-up there.
        api_mib, page_mib, note = idle_session_mib(server, args.sessions, 0 if args.smoke else WARM_UP_SESSIONS)

    def med(n: int, key: str) -> float:
        return median([s[key] for s in levels[n]])

    def total(n: int, key: str) -> int:
        return int(sum(s[key] for s in levels[n]))

    headers = [
        "clients", "ok", "refused", "failed", "TTFT p50 s", "TTFT p95 s", "gap p50 ms", "gap p95 ms",
        f"t{args.tokens} p50 s", f"t{args.tokens} p95 s", "tok/s", "mean batch", "pass ms",
        "peak MiB", "before MiB", "after MiB",
    ]  # fmt: skip
    rows = [
        [
            str(n), str(total(n, "ok")), str(total(n, "refused")), str(total(n, "failed")),
            fmt(med(n, "ttft_p50"), 2), fmt(med(n, "ttft_p95"), 2),
            fmt(med(n, "gap_p50") * 1000, 0), fmt(med(n, "gap_p95") * 1000, 0),
            fmt(med(n, "last_p50"), 2), fmt(med(n, "last_p95"), 2), fmt(med(n, "tok_s")),
            fmt(med(n, "mean_batch")), fmt(med(n, "pass_ms"), 0),
            fmt(med(n, "peak"), 0), fmt(med(n, "before"), 0), fmt(med(n, "after"), 0),
        ]
        for n in args.levels
    ]  # fmt: skip
    print(f"\nserver RSS idle after start: {idle:.0f} MiB (ok/refused/failed: totals over the repetitions)")
    print_table(headers, rows, markdown=args.markdown)
    api = f"{api_mib * 1024:.0f} KiB" if api_mib is not None else "n/a"
    page = f"{page_mib * 1024:.0f} KiB" if page_mib is not None else "n/a"
    print(f"\nmemory per idle session over {args.sessions}: API {api}, page {page}{note}")

    if args.client == "page":
        # Issue 6's targets are for /generate at full speed; a page's Auto-run waits between tokens.
        print(f"\nthe page's pace at {args.speed:g} tokens/s: a token every {1000 / args.speed:.0f} ms")
        for n in args.levels:
            print(
                f"  {n} clients: gap p50 {med(n, 'gap_p50') * 1000:.0f} ms, p95 {med(n, 'gap_p95') * 1000:.0f} ms;"
                f" {total(n, 'refused')} refused, {total(n, 'failed')} failed"
            )
        return
    print(f"\nissue 6 targets ({TARGET_CLIENTS} clients, {args.tokens} tokens each):")
    if TARGET_CLIENTS in levels:
        n = TARGET_CLIENTS
        checks = [
            (f"p95 time to first token <= {TTFT_TARGET_S:g} s", f"{med(n, 'ttft_p95'):.2f} s",
             med(n, "ttft_p95") <= TTFT_TARGET_S),
            (f"p95 time between tokens <= {GAP_TARGET_S * 1000:g} ms", f"{med(n, 'gap_p95') * 1000:.0f} ms",
             med(n, "gap_p95") <= GAP_TARGET_S),
            (f"p95 time to token {args.tokens} <= {LAST_TARGET_S:g} s", f"{med(n, 'last_p95'):.2f} s",
             med(n, "last_p95") <= LAST_TARGET_S),
            ("no errors", f"{total(n, 'refused')} refused, {total(n, 'failed')} failed",
             total(n, "refused") + total(n, "failed") == 0),
        ]  # fmt: skip
        for name, value, ok in checks:
            print(f"  {name:<34} {value:>24}  {verdict(ok)}")
    else:
        print(f"  not run (add {TARGET_CLIENTS} to --levels)")
    for n in (n for n in args.levels if n > TARGET_CLIENTS):
        # Graceful: every client is served or told "Queue is full", none fails or hangs.
        print(
            f"  {n} clients degrade gracefully (served or 'Queue is full', nothing else)"
            f" {total(n, 'failed'):>4} failed  {verdict(total(n, 'failed') == 0)}"
        )


if __name__ == "__main__":
    main()
