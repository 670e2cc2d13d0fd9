"""`POST /stream/generate`: /generate's tokens as plain server-sent events, beside Gradio's queue.

Gradio's queue carries every update of every event through one event loop: it diffs each update
against the last, wraps it in a queue message, and writes it to the session's stream, and its
clients (gradio_client, the REST `call` route) add their own hops. For a class streaming at once
that costs more per token than the model does (see docs/performance.md). This route runs the same
/generate (the same arguments, checks, run loop and JSON per token) and writes each update to the
HTTP response as one `data:` line, nothing else:

    curl -N http://127.0.0.1:7860/stream/generate -H 'Content-Type: application/json' \\
         -d '{"prompt": "Once upon a time", "max_new_tokens": 20}'

    data: {"text": "Once upon a time there", "token_id": 612, ...}
    ...
    event: done
    data: {"stop_reason": "max_new_tokens"}

A bad call is answered at once with an HTTP error and a JSON body `{"error": ..., "title": ...}`
that says what is wrong (400 for an argument; 429 with `Retry-After` for a client over its share,
tokstep.web.client_limits); an error during the
run (a serving engine's fault) ends the stream with `event: error` and the same body. A client
that goes away closes its run. `create_demo` registers each page's /generate with `serve_streams`;
the route is added to the app through `launch(app_kwargs=...)` (tokstep.web.rest.app_kwargs).
"""

from __future__ import annotations

import json
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio
import gradio as gr
import pydantic
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

PATH = "/stream/generate"
MAX_BODY_BYTES = 2_000_000  # a prompt of 100,000 characters is under 1.2 MB of JSON, escaped
DONE = object()  # what `next` gives back at the end of the updates

BUSY_RETRY_S = 5  # what a refusal for a full server suggests: streams of a class last seconds

# One page's /generate: (arguments, the Starlette request) -> its updates, checked as gr.Error.
Updates = Callable[[dict[str, Any], Request], Iterator[dict]]


class StreamSlots:
    """How many of the route's streams run at once, all clients together (each client's own cap is
    its fair share, tokstep.web.client_limits): like Gradio's concurrency limit on /generate, it keeps
    the route from taking every worker thread. A stream holds its slot while its updates live: given
    back when it ends, and also when a response that never started is dropped (a client gone before
    its first byte), as the updates go with it."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._streams: weakref.WeakSet[Iterator[dict]] = weakref.WeakSet()

    @property
    def running(self) -> int:
        return len(self._streams)

    def take(self, updates: Iterator[dict]) -> bool:
        """Hold a slot for `updates`; False when every slot is held. Only the event loop's thread
        calls this, so no lock."""
        if self.running >= self.limit:
            return False
        self._streams.add(updates)
        return True

    def give(self, updates: Iterator[dict]) -> None:
        self._streams.discard(updates)


_pages: weakref.WeakKeyDictionary[gr.Blocks, tuple[Updates, StreamSlots]] = weakref.WeakKeyDictionary()


class GenerateCall(pydantic.BaseModel):
    """/generate's arguments by name, with its defaults; values are checked by /generate itself."""

    model_config = pydantic.ConfigDict(extra="forbid")

    prompt: Any
    max_new_tokens: Any = 20
    sample: Any = False
    temperature: Any = 1.0
    top_k: Any = 0
    top_p: Any = 1.0
    seed: Any = 0
    model: Any = ""
    layers: Any = False
    attention: Any = False


def serve_streams(demo: gr.Blocks, updates: Updates, max_streams: int) -> None:
    """Let `demo`'s app answer PATH with `updates` (held as long as the page is), at most
    `max_streams` at once."""
    _pages[demo] = (updates, StreamSlots(max_streams))


def streams_running(demo: gr.Blocks) -> int:
    """How many of `demo`'s route streams hold a slot now."""
    page = _pages.get(demo)
    return page[1].running if page is not None else 0


def stream_routes() -> list[Route]:
    """The routes to give the page's app (`FastAPI(routes=...)`, through `launch(app_kwargs=...)`)."""
    return [Route(PATH, generate_stream, methods=["POST"])]


def sse(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def refusal(status: int, title: str, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "title": title}, status_code=status)


def error_body(error: gr.Error) -> dict[str, str]:
    return {"error": str(error.message), "title": str(error.title or "Error")}


async def generate_stream(request: Request) -> Response:
    page = _pages.get(request.app.get_blocks())
    if page is None:
        return refusal(404, "Not served", f"This app serves no {PATH}.")
    updates_for, slots = page
    arguments = await call_arguments(request)
    if isinstance(arguments, Response):
        return arguments
    updates = updates_for(arguments, request)
    if not slots.take(updates):
        busy = refusal(
            503, "Server busy",
            f"This server streams at most {slots.limit} runs at once on {PATH}, and all are taken: "
            f"retry in {BUSY_RETRY_S} s.",
        )  # fmt: skip
        busy.headers["Retry-After"] = str(BUSY_RETRY_S)
        return busy
    # The first update runs the checks (a bad argument, a client over its share) and the prompt's
    # pass: a refusal is an HTTP error, not a stream that starts and then fails.
    try:
        first = await anyio.to_thread.run_sync(next, updates, DONE)
    except gr.Error as error:
        slots.give(updates)
        # 429 for a client over its share (the error says so, and when to retry), 400 for anything
        # else it sent.
        retry_after = getattr(error, "retry_after_s", None)
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
        body = error_body(error) | ({"retry_after_s": retry_after} if retry_after is not None else {})
        return JSONResponse(body, status_code=getattr(error, "http_status", 400), headers=headers)
    headers = {"Cache-Control": "no-cache"}
    return StreamingResponse(events(first, updates, slots), media_type="text/event-stream", headers=headers)


async def call_arguments(request: Request) -> dict[str, Any] | Response:
    """The call's arguments, or the HTTP error that says what is wrong with the body."""
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        return refusal(413, "Bad call", f"The request body is over {MAX_BODY_BYTES / 1e6:.0f} MB: too long for a call.")
    try:
        parsed = json.loads(body or b"null")
    except ValueError:
        return refusal(400, "Bad call", 'The body is not JSON: send {"prompt": "...", "max_new_tokens": 20, ...}.')
    if not isinstance(parsed, dict):
        return refusal(400, "Bad call", 'The body must be a JSON object: {"prompt": "...", "max_new_tokens": 20, ...}.')
    try:
        return GenerateCall.model_validate(parsed).model_dump()
    except pydantic.ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in entry['loc']) or 'body'}: "
            + ("unknown argument" if entry["type"] == "extra_forbidden" else entry["msg"].lower())
            for entry in error.errors()
        )
        names = ", ".join(GenerateCall.model_fields)
        return refusal(400, "Bad call", f"{problems}. The arguments are: {names}; only prompt is required.")


async def events(first: Any, updates: Iterator[dict], slots: StreamSlots) -> AsyncIterator[bytes]:
    """Each update as one event, then `done` (or `error`). Cancelled when the client goes: the
    update being made ends first (a thread cannot be stopped), then the run is closed."""
    update, last = first, None
    try:
        while update is not DONE:
            yield sse(update)
            last = update
            update = await anyio.to_thread.run_sync(next, updates, DONE)
        yield sse({"stop_reason": last.get("stop_reason") if isinstance(last, dict) else None}, "done")
    except gr.Error as error:
        yield sse(error_body(error), "error")
    finally:
        updates.close()  # the run ends: its prefetched pass is withdrawn, and no pass waits for it
        slots.give(updates)
