"""tokstep on a serving engine (vLLM) against tokstep in process, and the engine alone, in one run.

Measured on the bundled model (vLLM's CPU build serves a copy of it, started here from
.venv-vllm/ unless --engine-url names one already running), all on this machine:

  per step     one sequence, 64 greedy tokens with `generate_steps`: the model in this process
               (a direct call) against the engine runtime (one HTTP request per token)
  a class      30 and 120 clients at the same moment, each asking `/generate` for 32 tokens,
               of three servers: tokstep in process (`python app.py --model tinystories`),
               tokstep on the engine (`python app.py --engine-url ...`), and the engine alone
               (each client sends vLLM the requests tokstep's engine runtime sends: the whole
               sequence, max_tokens=1, logprobs=20, one request per token)

Per class: time to first token, gaps between tokens, tokens per second, refused/failed clients
(the app's queue refuses past 64 waiting events, as deployed), the CPU time the front end and
the engine each spent per token delivered (all their processes; the engine's only when this
script started it), the front end's memory, then the ratios engine-runtime / in-process and
engine-runtime / engine alone. Everything shares this machine's cores: on a real deployment the
engine has a machine (and a GPU) of its own, so the CPU per token is the figure to plan with.

    python -m bench.engine_runtime                          # starts vLLM (about 100 s on 2 cores)
    python -m bench.engine_runtime --engine-url http://127.0.0.1:8000/v1
    python -m bench.engine_runtime --smoke                  # 3 clients, 8 tokens, one repetition
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

from bench.classroom import ClientResult, LevelResult, generate_request, run_sse_clients
from bench.common import (
    BUNDLED,
    QUIET_ENV,
    ROOT,
    fmt,
    free_port,
    http_ok,
    machine_line,
    median,
    print_table,
    proc_memory_mib,
)

VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
PROMPT_TEXT = "Once upon a time"
DEADLINE_S = 300.0


def group_cpu_s(pgid: int | None) -> float:
    """CPU seconds (user + system) used so far by every process in process group `pgid` (NaN for None)."""
    if pgid is None:
        return float("nan")
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:  # field 5 of /proc/PID/stat: the process group
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


@dataclasses.dataclass
class Running:
    """A server started here: its URL and its process group (None: started elsewhere, not measured)."""

    url: str
    pgid: int | None


@contextlib.contextmanager
def vllm_server(url: str | None) -> Iterator[Running]:
    """`url` as it is, or a vLLM server of our own on a copy of the bundled model (stopped at the end)."""
    if url:
        yield Running(url.rstrip("/"), None)
        return
    if not VLLM_PYTHON.exists():
        sys.exit(f"{VLLM_PYTHON} is missing: run scripts/install-vllm.sh, or pass --engine-url")
    folder = Path(tempfile.mkdtemp(prefix="tokstep-vllm-")) / BUNDLED
    shutil.copytree(ROOT / "tokstep" / "models" / BUNDLED, folder)
    port = free_port()
    command = [
        str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder),
        "--served-model-name", BUNDLED, "--dtype", "float32", "--max-model-len", "256", "--max-logprobs", "100",
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    env = {**os.environ, **QUIET_ENV, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_NO_USAGE_STATS": "1"}
    log = open(folder.parent / "vllm.log", "w")  # noqa: SIM115 (open for the server's whole life)
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    started = time.monotonic()
    try:
        while not http_ok(f"http://127.0.0.1:{port}/v1/models", timeout=2):
            if process.poll() is not None or time.monotonic() - started > 600:
                sys.exit(f"vLLM did not start; see {folder.parent / 'vllm.log'}")
            time.sleep(1)
        print(f"vLLM ready in {time.monotonic() - started:.0f} s", flush=True)
        yield Running(f"http://127.0.0.1:{port}/v1", process.pid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 15)
        process.wait(timeout=30)
        log.close()
        shutil.rmtree(folder.parent, ignore_errors=True)


@contextlib.contextmanager
def app_server(*arguments: str) -> Iterator[Running]:
    """`python app.py ARGUMENTS` on a free port, as deployed, in a process group of its own; stopped at the end."""
    port = free_port()
    # One model on the page, as on the engine (the dropdown offers only the app's model).
    env = {**os.environ, **QUIET_ENV, "TOKSTEP_MODELS": ""}
    command = [sys.executable, "app.py", "--port", str(port), *arguments]
    process = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 300
        while not http_ok(url):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"app.py {' '.join(arguments)} did not start")
            time.sleep(0.2)
        yield Running(url, process.pid)
    finally:
        process.terminate()
        process.wait(timeout=30)


def per_step_ms(engine_url: str, tokens: int, repeats: int) -> tuple[float, float]:
    """ms per greedy token with `generate_steps`: in process (direct call), and on the engine (HTTP)."""
    import tokstep

    here = tokstep.load(BUNDLED)
    there = tokstep.load(BUNDLED, engine_url=engine_url)
    results = {"here": [], "there": []}
    for _ in range(repeats):
        for name, lm in (("here", here), ("there", there)):
            list(tokstep.generate_steps(lm, PROMPT_TEXT, max_new_tokens=4))  # warm
            started = time.perf_counter()
            written = sum(1 for _ in tokstep.generate_steps(lm, PROMPT_TEXT, max_new_tokens=tokens))
            results[name].append((time.perf_counter() - started) * 1000 / written)
    there.forward.runtime.close()
    return median(results["here"]), median(results["there"])


def engine_alone(engine_url: str, prompt_ids: list[int], n_clients: int, tokens: int) -> LevelResult:
    """Each client sends the engine what tokstep's engine runtime sends, one request per token."""
    results = [ClientResult() for _ in range(n_clients)]

    async def one(http: httpx.AsyncClient, start: asyncio.Event, result: ClientResult) -> None:
        await start.wait()
        result.started = time.perf_counter()
        ids = list(prompt_ids)
        try:
            for _ in range(tokens):
                response = await http.post(
                    f"{engine_url}/completions",
                    json={
                        "model": BUNDLED, "prompt": ids, "max_tokens": 1, "temperature": 0, "logprobs": 20,
                        "return_tokens_as_token_ids": True, "ignore_eos": True,
                    },
                )  # fmt: skip
                response.raise_for_status()
                token = response.json()["choices"][0]["logprobs"]["tokens"][0]
                ids.append(int(token.partition(":")[2]))
                result.arrivals.append(time.perf_counter())
        except Exception as error:  # an outcome, counted as a failure
            result.error = f"{type(error).__name__}: {error}"

    async def level() -> None:
        start = asyncio.Event()
        https = [httpx.AsyncClient(timeout=DEADLINE_S) for _ in results]
        tasks = [asyncio.create_task(one(http, start, r)) for http, r in zip(https, results, strict=True)]
        start.set()
        await asyncio.wait(tasks, timeout=DEADLINE_S)
        for http in https:
            await http.aclose()

    asyncio.run(level())
    return LevelResult(n_clients, results, 0.0, 0.0, 0.0)


def through_tokstep(url: str, n_clients: int, tokens: int, model_argument: bool) -> LevelResult:
    """`n_clients` /generate streams at once (bench.classroom's clients). `model_argument`: the app
    offers a model list (in process), so /generate takes a model name last ("": the app's own)."""
    request = generate_request(tokens)
    if model_argument:
        request = dataclasses.replace(request, arguments=[*request.arguments, ""])
    results = [ClientResult() for _ in range(n_clients)]
    run_sse_clients(url, request, results, DEADLINE_S)
    return LevelResult(n_clients, results, 0.0, 0.0, 0.0)


def charged(
    run: Callable[[], LevelResult], front: Running | None, engine: Running, tokens: int
) -> tuple[dict[str, float], list[float]]:
    """Run one level; its stats, and the CPU ms per delivered token of the front end and of the
    engine (then the front end's RSS in MiB, when there is one)."""
    before = (group_cpu_s(front.pgid) if front else 0.0, group_cpu_s(engine.pgid))
    result = run()
    after = (group_cpu_s(front.pgid) if front else 0.0, group_cpu_s(engine.pgid))
    delivered = sum(len(r.arrivals) for r in result.results) or 1
    cpu = [(b - a) * 1000 / delivered for a, b in zip(before, after, strict=True)]
    if front is not None:
        cpu.append(proc_memory_mib(front.pgid)["VmRSS"])
    return result.stats(tokens), cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine-url", help="a vLLM server already serving the bundled model as 'tinystories'")
    parser.add_argument("--smoke", action="store_true", help="3 clients, 8 tokens, one repetition")
    parser.add_argument("--levels", default="30,120", help="class sizes (default 30,120)")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    levels = [3] if args.smoke else [int(n) for n in args.levels.split(",")]
    tokens = 8 if args.smoke else args.tokens
    print(machine_line(), flush=True)
    with vllm_server(args.engine_url) as engine:
        engine_url = engine.url
        here_ms, there_ms = per_step_ms(engine_url, 16 if args.smoke else 64, 1 if args.smoke else 3)
        print_table(
            ["one sequence", "ms per token", "tokens/s"],
            [
                ["tokstep in process (direct call)", f"{here_ms:.2f}", f"{1000 / here_ms:,.0f}"],
                ["tokstep on the engine (HTTP)", f"{there_ms:.2f}", f"{1000 / there_ms:,.0f}"],
                ["engine / in process", f"{there_ms / here_ms:.1f}", ""],
            ],
            markdown=args.markdown,
        )
        from tokstep.core.loading import load_without_weights
        from tokstep.core.tokens import tokenize

        prompt_ids = tokenize(load_without_weights(BUNDLED).tokenizer, PROMPT_TEXT)
        rows, ratios = [], []
        for n in levels:
            measured, cpu = {}, {}
            with app_server("--model", BUNDLED) as front:
                run = functools.partial(through_tokstep, front.url, n, tokens, True)
                measured["tokstep in process"], cpu["tokstep in process"] = charged(run, front, engine, tokens)
            with app_server("--engine-url", engine_url) as front:
                run = functools.partial(through_tokstep, front.url, n, tokens, False)
                measured["tokstep on the engine"], cpu["tokstep on the engine"] = charged(run, front, engine, tokens)
            run = functools.partial(engine_alone, engine_url, prompt_ids, n, tokens)
            measured["engine alone"], cpu["engine alone"] = charged(run, None, engine, tokens)
            for name, s in measured.items():
                front_ms, engine_ms, *rss = cpu[name]
                rows.append(
                    [
                        str(n), name, str(s["ok"]), str(s["refused"]), str(s["failed"]),
                        fmt(s["ttft_p50"], 2), fmt(s["ttft_p95"], 2), fmt(s["gap_p50"] * 1000, 0),
                        fmt(s["gap_p95"] * 1000, 0), fmt(s["tok_s"], 0),
                        fmt(front_ms, 2) if name != "engine alone" else "-",
                        fmt(engine_ms, 2) if name != "tokstep in process" else "-",
                        fmt(rss[0], 0) if rss else "-",
                    ]
                )  # fmt: skip
            on, inproc, alone = (measured[k] for k in ("tokstep on the engine", "tokstep in process", "engine alone"))
            ratios.append(
                [
                    str(n),
                    fmt(on["tok_s"] / inproc["tok_s"], 2),
                    fmt(on["tok_s"] / alone["tok_s"], 2),
                    fmt(on["gap_p50"] / inproc["gap_p50"], 2),
                    fmt(on["gap_p50"] / alone["gap_p50"], 2),
                ]
            )
        print()
        headers = ["clients", "server", "ok", "refused", "failed", "TTFT p50 s", "TTFT p95 s"]
        headers += ["gap p50 ms", "gap p95 ms", "tok/s", "front CPU ms/tok", "engine CPU ms/tok", "front RSS MiB"]
        print_table(headers, rows, markdown=args.markdown)
        print()
        print_table(
            ["clients", "tok/s engine-runtime / in-process", "tok/s engine-runtime / engine alone",
             "gap p50 engine-runtime / in-process", "gap p50 engine-runtime / engine alone"],
            ratios,
            markdown=args.markdown,
        )  # fmt: skip


if __name__ == "__main__":
    main()
