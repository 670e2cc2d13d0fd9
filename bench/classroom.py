"""A class at once: 10, 30 and 60 clients each ask `/generate` for 32 tokens at the same moment.

The server is the app as deployed (`create_demo(lm)` with LAUNCH_OPTIONS and default limits) in a
process of its own (`bench.serve_for_bench`), on GPT-2-small shape (random weights: GPT-2's
compute). Each client is a session of its own that speaks Gradio's queue protocol as the page
does (`bench.sse_client`: join, then read the server-sent events), all in one asyncio loop and
released at the same moment; `--client gradio_client` uses a `gradio_client.Client` per client
instead, in a thread each (heavier on the shared CPU, and its reader polls every 50 ms, which
shows in the gaps). `--client page` makes each client a page pressing Auto-run instead (the
page's `/autorun` event, at `--speed` tokens per second, the page's default 3): what a class of
students in browser tabs asks of the server, each update a whole page view (token chips, top-k,
status, tables, text) rather than /generate's small JSON. Issue 6's targets are for /generate
at full speed; for page clients the script reports the gaps against the page's pace instead.
Per client: time to the first token,
the times between tokens, time to the 32nd token. Reported, median over repetitions:

  TTFT p50/p95       time to first token, across clients
  gap p50/p95        time between consecutive tokens, all clients' gaps pooled
  t32 p50/p95        time to the last (32nd) token, across the clients that got all of them
  tok/s              all tokens received / time from the start to the last token
  mean batch         requests the server's forward passes answered during the level / passes
  pass ms            the server's mean wall time per forward pass during the level
  refused / failed   "Queue is full" is a graceful refusal; anything else (an exception, a
                     stream that ends early, a client still waiting at the deadline) a failure
  peak / after MiB   the server's VmHWM during the level (reset before it) and its RSS once the
                     clients have closed (after malloc_trim in the server)

then the memory one idle session holds: the server's RSS growth over N sessions that each made
one short call, divided by N (API sessions via /generate; page sessions via the page's own
/reset event, as a browser tab makes them), after 64 such sessions that are not measured (they
push the levels' sequences, whose KV caches the server keeps warm, out first). Targets of
issue 6 are checked at the end.

    python -m bench.classroom              # 10, 30, 60 clients, 3 repetitions (about 15 minutes on 2 cores)
    python -m bench.classroom --quick      # 1 repetition
    python -m bench.classroom --smoke      # 3 clients, 8 tokens, the bundled model (the test suite's)
    python -m bench.classroom --client page --levels 30   # 30 page Auto-runs at the page's default speed
"""

from __future__ import annotations

import argparse
import asyncio
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

from bench.common import (
    BUNDLED,
    GPT2_SMALL_SHAPE,
    BenchServer,
    bench_server,
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
from tokstep.core.stepper import STOP_REASON_TEXT
from tokstep.runtimes.warm_set import DEFAULT_WARM_SEQUENCES
from tokstep.web.constants import DEFAULT_SPEED
from tokstep.web.settings import page_arguments
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
            "ok": outcomes.count("ok"),
            "refused": outcomes.count("refused"),
            "failed": outcomes.count("failed"),
            "peak": self.peak_mib,
            "before": self.before_mib,
            "after": self.after_mib,
            "mean_batch": self.served / self.passes if self.passes else float("nan"),
            "pass_ms": self.pass_seconds / self.passes * 1000 if self.passes else float("nan"),
        }


def new_client(url: str):  # -> gradio_client.Client
    from gradio_client import Client

    return Client(url, verbose=False, analytics_enabled=False)


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


def run_sse_clients(url: str, request: Request, results: list[ClientResult], deadline_s: float) -> None:
    """Every client at the same moment, in one asyncio loop; a client still going at the deadline fails."""
    event = fn_index(url, request.api_name)

    async def level() -> None:
        start = asyncio.Event()
        # A connection pool per client, as each student's browser has its own.
        https = [httpx.AsyncClient(timeout=httpx.Timeout(deadline_s)) for _ in results]
        tasks = [
            asyncio.create_task(one_sse_client(http, url, event, request, start, result))
            for http, result in zip(https, results, strict=True)
        ]
        start.set()
        done, pending = await asyncio.wait(tasks, timeout=deadline_s)
        for task, result in zip(tasks, results, strict=True):
            if task in pending:
                task.cancel()
                result.error = f"still waiting after {deadline_s:.0f} s"
        await asyncio.gather(*tasks, return_exceptions=True)
        for http in https:
            await http.aclose()

    asyncio.run(level())


def run_gradio_clients(url: str, results: list[ClientResult], tokens: int, deadline_s: float) -> None:
    """A thread per client, each with its own gradio_client.Client, released by a barrier."""
    # Clients connect (config, API info, heartbeat) before the barrier: only the requests are timed.
    with ThreadPoolExecutor(max_workers=8) as pool:
        clients = list(pool.map(lambda _: new_client(url), range(len(results))))
    barrier = threading.Barrier(len(results))
    threads = [
        threading.Thread(target=one_client, args=(client, barrier, tokens, result), daemon=True)
        for client, result in zip(clients, results, strict=True)
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + deadline_s
    for thread, result in zip(threads, results, strict=True):
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
        if thread.is_alive() and result.error is None:
            result.error = f"still waiting after {deadline_s:.0f} s"
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
        "--client", choices=("sse", "gradio_client", "page"), default="sse",
        help="how clients talk to the server (see above)",
    )  # fmt: skip
    parser.add_argument(
        "--speed", type=float, default=DEFAULT_SPEED, help="with --client page: Auto-run's tokens per second"
    )
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = parser.parse_args()
    if args.smoke:
        args.levels, args.tokens, args.model, args.sessions, repeats = [3], 8, BUNDLED, 5, 1
    else:
        repeats = 1 if args.quick else args.repeats
        args.sessions = 30 if args.quick else args.sessions

    print(machine_line())
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
