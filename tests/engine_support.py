"""What the engine tests share: one real vLLM server for the session, and a stand-in engine whose
faults a test switches on.

`vllm_url` (session fixture) starts vLLM's OpenAI-compatible server from `.venv-vllm/`
(scripts/install-vllm.sh) on a copy of the bundled model, waits for it with a bounded timeout, and
kills it when the session ends. Without the venv the engine tests skip, saying why; under CI
(`CI` set) they fail, since the README's test command installs it.

`EngineDouble` is a small HTTP server in a thread. In front of a real engine (`upstream`) it passes
every request through; without one it answers from a fixed distribution (enough for the runtime's
checks and steps, not a model). Either way `mode` turns on a fault for the requests that follow:
"garbage" (a 200 that is not a completion), "not-json", "hang" (answers after `hang_s`), "close"
(closes the connection unanswered), "http-500"; `stop()` and `start()` take its port away and back
(connection refused in between).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
BUNDLED_DIR = ROOT / "tokstep" / "models" / "tinystories"
SERVED_NAME = "tinystories"
VLLM_START_TIMEOUT_S = 420  # about 100 s on 2 busy cores; the bound only catches a server that never comes up


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def vllm_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The base URL (…/v1) of a real vLLM server on the bundled model, shared by the session.

    TOKSTEP_TEST_VLLM_URL names one already running (served as "tinystories", started as in the
    README) instead, so that a developer rerunning the engine tests need not wait for a new one."""
    if os.environ.get("TOKSTEP_TEST_VLLM_URL"):
        yield os.environ["TOKSTEP_TEST_VLLM_URL"].rstrip("/")
        return
    if not VLLM_PYTHON.exists():
        reason = f"{VLLM_PYTHON} is missing: run scripts/install-vllm.sh"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    folder = tmp_path_factory.mktemp("vllm-model") / SERVED_NAME
    shutil.copytree(BUNDLED_DIR, folder)  # vLLM may write next to the model; the package stays as it is
    port = free_port()
    log_path = folder.parent / "vllm.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
    command = [
        str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder),
        "--served-model-name", SERVED_NAME, "--dtype", "float32", "--max-model-len", "256",
        "--max-logprobs", "100", "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    with open(log_path, "w") as log:
        # A process group of its own: vLLM starts an engine process, and both must go at the end.
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    started = time.monotonic()
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"vLLM exited with {process.returncode} before it was ready; its log:\n{_tail(log_path)}")
            if time.monotonic() - started > VLLM_START_TIMEOUT_S:
                pytest.fail(f"vLLM was not ready within {VLLM_START_TIMEOUT_S} s; its log:\n{_tail(log_path)}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                    break
            time.sleep(1)
        print(f"\nvLLM ready in {time.monotonic() - started:.0f} s at {url}", file=sys.stderr)
        yield url
    finally:
        _kill_group(process)


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _kill_group(process: subprocess.Popen) -> None:
    """End vLLM and the engine process it started: SIGTERM to the group, SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


# --- a stand-in engine with faults -------------------------------------------------------------


class EngineDouble:
    """A local HTTP server that passes requests to `upstream` (or answers them itself) until a fault is on."""

    def __init__(self, upstream: str | None = None, *, tokenizer=None, vocab_size: int = 2048, name: str = SERVED_NAME):
        self.upstream = upstream.rstrip("/") if upstream else None
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.name = name
        self.mode = "ok"
        self.hang_s = 3.0
        self.requests = 0  # completions asked for, faults included
        self.abandoned = 0  # requests whose client went away while they hung
        self.prompts: list[list[int]] = []  # each completion's prompt ids, in order
        # In "hang" mode, completions numbered hang_after + 1 .. hang_last hang (None: all that follow).
        self.hang_after, self.hang_last = 0, None
        self.port = free_port()
        self._server: ThreadingHTTPServer | None = None
        self._http = httpx.Client(timeout=30, trust_env=False)
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        double = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                double._handle(self, None)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                double._handle(self, self.rfile.read(length))

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        """Nothing listens on the port any more (connection refused) until `start()`."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def close(self) -> None:
        self.stop()
        self._http.close()

    def _handle(self, handler: BaseHTTPRequestHandler, body: bytes | None) -> None:
        path = handler.path
        if path.endswith("/completions"):
            self.requests += 1
            with contextlib.suppress(ValueError, TypeError, KeyError):
                self.prompts.append(list(json.loads(body)["prompt"]))
        mode = self.mode
        if mode == "close":
            handler.close_connection = True
            with contextlib.suppress(OSError):
                handler.connection.shutdown(socket.SHUT_RDWR)
            return
        held = self.hang_after < self.requests <= (self.hang_last if self.hang_last is not None else self.requests)
        if mode == "hang" and held and self._client_left_within(handler, self.hang_s):
            self.abandoned += 1  # the client closed its connection while its request waited
            return
        if mode == "http-500":
            return self._send(handler, 500, {"error": {"message": "the engine's worker died", "code": 500}})
        if mode == "garbage":
            return self._send(handler, 200, {"choices": [{"text": "hello", "logprobs": {"tokens": ["what"]}}]})
        if mode == "not-json":
            return self._send_raw(handler, 200, b"<html>502 Bad Gateway</html>", "text/html")
        if self.upstream is not None:
            headers = {"Content-Type": handler.headers.get("Content-Type", "application/json")}
            url = self.upstream + path.removeprefix("/v1")
            response = self._http.request(handler.command, url, content=body, headers=headers)
            return self._send_raw(handler, response.status_code, response.content, "application/json")
        request = json.loads(body) if body else None
        status, answer = self._answer(path, request)
        self._send(handler, status, answer)

    @staticmethod
    def _client_left_within(handler: BaseHTTPRequestHandler, seconds: float) -> bool:
        """Wait up to `seconds`; True as soon as the client closes its end (a read gives EOF)."""
        connection = handler.connection
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select([connection], [], [], min(left, 0.05))
            if readable:
                try:
                    if connection.recv(1, socket.MSG_PEEK) == b"":
                        return True
                except OSError:
                    return True
                time.sleep(0.01)  # bytes of a next request on a kept-alive connection: not a close
        return False

    def _send(self, handler: BaseHTTPRequestHandler, status: int, answer: dict) -> None:
        self._send_raw(handler, status, json.dumps(answer).encode(), "application/json")

    def _send_raw(self, handler: BaseHTTPRequestHandler, status: int, data: bytes, kind: str) -> None:
        with contextlib.suppress(OSError):
            handler.send_response(status)
            handler.send_header("Content-Type", kind)
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)

    @property
    def greedy_id(self) -> int:
        """The token it answers as the most likely, after any prompt (rank 1 of `_answer`'s order)."""
        return 11 % self.vocab_size

    def _answer(self, path: str, request: dict | None) -> tuple[int, dict]:
        """A fixed distribution (the token of rank r has weight 1 / r**1.5), shaped as vLLM answers."""
        if path.endswith("/models"):
            return 200, {"object": "list", "data": [{"id": self.name, "object": "model", "max_model_len": 256}]}
        ids = request["prompt"]
        if any(not 0 <= i < self.vocab_size for i in ids):
            bad = next(i for i in ids if not 0 <= i < self.vocab_size)
            return 400, {"error": {"message": f"Token id {bad} is out of vocabulary", "code": 400}}
        k = request.get("logprobs") or 1
        # Rank r is token 7r + 11 (mod V): no ties, and the end-of-text token 0 is far down.
        order = [(7 * r + self.greedy_id) % self.vocab_size for r in range(self.vocab_size)]
        weights = [0.0] * self.vocab_size
        for r, i in enumerate(order):
            weights[i] = 1.0 / (r + 1) ** 1.5
        log_total = math.log(sum(weights))
        logprob = {i: math.log(weights[i]) - log_total for i in order[: max(k, 1)]}
        chosen = order[len(ids) % 3] if request.get("temperature") else order[0]
        logprob.setdefault(chosen, math.log(weights[chosen]) - log_total)
        top = {f"token_id:{i}": logprob[i] for i in [chosen, *order[:k]]}
        choice = {
            "index": 0,
            "text": (self.tokenizer.decode(ids) if request.get("echo") and self.tokenizer else "") + "x",
            "logprobs": {"tokens": [f"token_id:{chosen}"], "token_logprobs": [logprob[chosen]], "top_logprobs": [top]},
            "prompt_logprobs": None,
        }
        if request.get("prompt_logprobs") is not None:
            ranks = {i: r + 1 for r, i in enumerate(order)}
            choice["prompt_logprobs"] = [None] + [
                {str(i): {"logprob": math.log(weights[i]) - log_total, "rank": ranks[i]}} for i in ids[1:]
            ]
        return 200, {"object": "text_completion", "choices": [choice]}
