"""Fair share at the door of Gradio's queue: a /generate event past its caller's cap is refused as
it joins, before the queue holds it.

Gradio's queue bounds the events waiting for everyone together (`max_size`), and serves them first
come, first served. Refused only when they start, a flood of 80 /generate calls from one address
would take the queue's places before the class behind it, which would be told the queue is full.
So `QueueAdmission`, an ASGI middleware on the page's app (`launch(app_kwargs=...)`, see
tokstep.web.rest.app_kwargs), counts each /generate event as it joins (`ClientLimits.api_join`: the
caller's runs streaming plus its events waiting may not pass its cap) and answers a join past it as
Gradio answers a call its validator refuses (HTTP 422, so gradio_client raises the message as a
`ValidationError`), with `error`, `title` and `Retry-After` for other clients; tokstep.web.rest
refuses a REST call
past it the same way it refuses a bad call (an event whose stream is the error). The run itself is
admitted again when it starts (the tokens a minute are taken then).

A join that leaves out trailing optional arguments (a client written before /generate gained `layers`
and `attention`) gets their defaults here, as gradio_client and the REST routes fill them in: Gradio's
queue runs an event only with every argument.

`admit_joins(demo, clients)` registers a page, as create_demo does.
"""

from __future__ import annotations

import json
import weakref
from dataclasses import dataclass
from typing import Any

import gradio as gr
from starlette.requests import Request

from tokstep.web.asgi import ASGIApp, Message, Receive, Scope, Send, replay, with_json_body
from tokstep.web.client_limits import ClientLimits, OverShareError

JOIN_SUFFIX = "/gradio_api/queue/join"
MAX_JOIN_BYTES = 2_000_000  # a join carries a call's arguments: a 100,000-character prompt at most
ADMITTED = ("generate",)  # the API endpoints counted per caller's address
JOIN_RETRY_S = 5  # a refused join's Retry-After when its runs, not its tokens, are the bound


@dataclass
class Admission:
    """What one page counts at the door: its clients' shares and the endpoints they cover."""

    clients: ClientLimits
    api_names: tuple[str, ...]
    # Each covered endpoint's parameters, as gradio_client reads them (Blocks.get_api_info): read once,
    # at the first join, when the page is built.
    parameters: dict[str, list[dict[str, Any]]] | None = None

    def parameters_of(self, scope: Scope, api_name: str) -> list[dict[str, Any]]:
        if self.parameters is None:
            endpoints = scope["app"].get_blocks().get_api_info(all_endpoints=True)["named_endpoints"]
            self.parameters = {name: endpoints.get(f"/{name}", {}).get("parameters", []) for name in self.api_names}
        return self.parameters.get(api_name, [])


_pages: weakref.WeakKeyDictionary[gr.Blocks, Admission] = weakref.WeakKeyDictionary()


def admit_joins(demo: gr.Blocks, clients: ClientLimits, api_names: tuple[str, ...] = ADMITTED) -> None:
    """Count `demo`'s events of `api_names` against their caller's cap as they join the queue."""
    _pages[demo] = Admission(clients, api_names)


def refusal(scope: Scope, api_name: str | None) -> OverShareError | None:
    """The OverShareError for a call to `api_name` joining the queue now, or None when it may join
    (and is counted as waiting)."""
    admission = _pages.get(scope["app"].get_blocks()) if "app" in scope else None
    if admission is None or api_name not in admission.api_names:
        return None
    try:
        admission.clients.api_join(Request(scope))
    except OverShareError as error:
        return error
    return None


def with_defaults(scope: Scope, api_name: str | None, join: Any) -> bytes | None:
    """The body of a join of a covered endpoint whose `data` leaves out trailing arguments that have
    defaults, with those filled in as gradio_client fills them; None when there is nothing to fill.

    Gradio's queue runs an event only with every argument, and /generate has gained optional ones
    (`layers`, `attention`): a client that joins the queue itself with the arguments it always sent
    goes on working. Anything else about the join is Gradio's to judge, as before."""
    admission = _pages.get(scope["app"].get_blocks()) if "app" in scope else None
    if admission is None or api_name not in admission.api_names or not isinstance(join, dict):
        return None
    data, parameters = join.get("data"), admission.parameters_of(scope, api_name)
    if not isinstance(data, list) or not data or len(data) >= len(parameters):
        return None
    rest = parameters[len(data) :]
    if not all(parameter.get("parameter_has_default") for parameter in rest):
        return None
    return json.dumps({**join, "data": [*data, *(parameter.get("parameter_default") for parameter in rest)]}).encode()


def api_name_of(scope: Scope, fn_index: Any) -> str | None:
    """The API name of the page's event `fn_index` (as a join names it), or None."""
    if isinstance(fn_index, bool) or not isinstance(fn_index, int):
        return None
    function = scope["app"].get_blocks().fns.get(fn_index)
    return getattr(function, "api_name", None)


class QueueAdmission:
    """The ASGI middleware: refuses `POST /gradio_api/queue/join` for a /generate event past its
    caller's cap, fills in the optional arguments such a join leaves out (`with_defaults`), and passes
    every other request on untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].rstrip("/").endswith(JOIN_SUFFIX):
            await self.app(scope, receive, send)
            return
        client_receive = receive
        body, receive = await buffered(receive)
        try:
            join = json.loads(body) if body else None
            fn_index = join.get("fn_index")
        except (ValueError, AttributeError):
            join, fn_index = None, None  # not ours to judge: Gradio answers a malformed join itself
        api_name = api_name_of(scope, fn_index)
        error = refusal(scope, api_name)
        if error is not None:
            await send_refusal(send, error)
            return
        filled = with_defaults(scope, api_name, join)
        if filled is not None:  # the whole body was read: after it, the client's own receive (a disconnect)
            scope, receive = with_json_body(scope, filled), replay(filled, client_receive)
        await self.app(scope, receive, send)


async def send_refusal(send: Send, error: OverShareError) -> None:
    """Answer a join as Gradio answers a call its validator refuses (422, one entry in `detail`), so
    gradio_client raises the message as a ValidationError rather than a bare HTTP error; `error` and
    `title` carry it for any other client, and `Retry-After` says when to try again."""
    entry = {"__type__": "validate", "is_valid": False, "parameter_name": "fair share", "message": error.message}
    answer = json.dumps({"detail": [entry], "error": error.message, "title": error.title}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(answer)).encode())]
    headers.append((b"retry-after", str(error.retry_after_s or JOIN_RETRY_S).encode()))
    await send({"type": "http.response.start", "status": 422, "headers": headers})
    await send({"type": "http.response.body", "body": answer})


async def buffered(receive: Receive) -> tuple[bytes, Receive]:
    """The request's body (up to MAX_JOIN_BYTES; a longer one is passed on unread past that), and a
    `receive` that gives the app the same body."""
    chunks, size, more = [], 0, True
    while more and size <= MAX_JOIN_BYTES:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        more = message.get("more_body", False)
    body, pending = b"".join(chunks), list(chunks)

    async def replayed() -> Message:
        if pending:
            return {"type": "http.request", "body": pending.pop(0), "more_body": bool(pending) or more}
        return await receive()

    return (body if not more else b""), replayed
