"""Gradio's REST routes as curl calls them: optional arguments take their defaults, and a bad call
gets a message that says what is wrong.

Gradio 6.31's `POST /gradio_api/call/<name>` hands the `data` list to the event as it comes. A list
shorter than the endpoint's parameters fails in `Blocks.validate_inputs` with a plain ValueError
("didn't receive enough input values"), and the queue reports any exception that is not a gr.Error
as `event: error` / `data: {"error": null}`, unless the app runs with `show_error=True` (which would
show every real fault's message to every visitor). gradio_client never meets this: it fills in the
defaults itself, from the endpoint's API info. Gradio answers the other malformed calls with no
reason a person can act on either: too many arguments are dropped without a word, an unknown endpoint
or (on `/call/v2/<name>`, which takes arguments by name) an unknown or missing argument is a bare
"Internal Server Error", and a body that is not JSON is a 422 that never says what to send.

`RestCalls`, an ASGI middleware on the page's app (`app_kwargs`, see tokstep.web.page.LAUNCH_OPTIONS),
stands in front of those routes and does what gradio_client does before Gradio sees the call: it fills
in the defaults of the arguments left out, from the same API info, so `{"data": ["Once upon a time"]}`
runs /generate with its defaults. A call it cannot complete (an unknown endpoint, a body that is not
JSON or has no `data` list, a required argument left out, too many arguments, an unknown name) is
answered as every other bad call is: the POST gives an event id and that event's stream is one
`event: error` whose `error` says what is wrong. Values are not checked here: the endpoints check
them (tokstep.web.checks) and their gr.Error messages reach REST clients as they are.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import Any

from starlette.middleware import Middleware

from tokstep.web.asgi import ASGIApp, Receive, Scope, Send, replay, with_json_body
from tokstep.web.checks import titled
from tokstep.web.queue_admission import QueueAdmission, refusal
from tokstep.web.stream_route import stream_routes

LOG = logging.getLogger("tokstep")

TITLE = "Bad call"
# Gradio's routes live under /gradio_api (gradio.route_utils.API_PREFIX); the path may carry a root
# path before it (behind a proxy), so only its end is matched.
CALL_PATH = re.compile(r"/gradio_api/call/(?:(?P<by_name>v2)/)?(?P<name>[^/]+)/?$")
RESULT_PATH = re.compile(r"/gradio_api/call/(?:v2/)?[^/]+/(?P<event_id>[^/]+)/?$")
# A call is a prompt and a few numbers: /generate's longest prompt (100,000 characters) is under 1.2 MB
# of JSON even with every character escaped. Past this the body is not read on.
MAX_CALL_BYTES = 2_000_000
MAX_REFUSALS = 1000  # refused calls whose stream nobody has read yet (the oldest go first)
KEYWORDS_GRADIO_TAKES = {"oauth_token"}  # a /call/v2 body key Gradio takes for itself


class RestCalls:
    """The ASGI middleware: completes `POST /gradio_api/call[/v2]/<name>` bodies with their defaults,
    and answers the calls it cannot complete with an event whose stream says why."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # Refused calls' messages by the event id their POST answered with, until their stream is read.
        self.refusals: OrderedDict[str, tuple[str, str]] = OrderedDict()  # (message, title)
        self.endpoints: dict[str, dict[str, Any]] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, method = scope["path"], scope["method"]
        result = RESULT_PATH.search(path) if method == "GET" else None
        if result is not None and result["event_id"] in self.refusals:
            await send_error_stream(send, *self.refusals.pop(result["event_id"]))
            return
        call = CALL_PATH.search(path) if method == "POST" else None
        if call is None:
            await self.app(scope, receive, send)
            return
        body = await read_body(receive, MAX_CALL_BYTES)
        if body is None:
            outcome: bytes | str = f"The request body is over {MAX_CALL_BYTES / 1e6:.0f} MB: too long for a call."
        else:
            outcome = complete_call(self.endpoints_of(scope), call["name"], bool(call["by_name"]), body)
        if isinstance(outcome, str):
            await self.refuse(send, outcome)
            return
        over = refusal(scope, call["name"])  # the caller past its fair share: not into the queue
        if over is not None:
            await self.refuse(send, over.message, over.title, titled_already=True)
            return
        await self.app(with_json_body(scope, outcome), replay(outcome, receive), send)

    def endpoints_of(self, scope: Scope) -> dict[str, dict[str, Any]]:
        """The app's endpoints that API clients may call, with their parameters, as gradio_client
        reads them (`Blocks.get_api_info`, undocumented ones too); read once, the page is built."""
        if self.endpoints is None:
            # Starlette puts the app itself in the scope, before its middleware runs: Gradio's App.
            blocks = scope["app"].get_blocks()
            self.endpoints = blocks.get_api_info(all_endpoints=True)["named_endpoints"]
        return self.endpoints

    async def refuse(self, send: Send, message: str, title: str = TITLE, *, titled_already: bool = False) -> None:
        """Answer the POST with an event id whose stream is the error, as for any other bad call
        (`titled_already`: the message starts with its title)."""
        message = message if titled_already else titled(title, message)
        LOG.warning("tokstep: %s", message)  # a client's mistake: one line, no traceback
        event_id = uuid.uuid4().hex
        self.refusals[event_id] = (message, title)
        while len(self.refusals) > MAX_REFUSALS:
            self.refusals.popitem(last=False)
        answer = json.dumps({"event_id": event_id}, separators=(",", ":"))  # as Gradio writes it
        await send_bytes(send, 200, "application/json", answer.encode())


def signature(name: str, parameters: list[dict[str, Any]]) -> str:
    """An endpoint's arguments as a person reads them: "/generate(prompt, max_new_tokens=20, ...)"."""
    return f"/{name}({', '.join(describe(parameter) for parameter in parameters)})"


def describe(parameter: dict[str, Any]) -> str:
    name = parameter_name(parameter)
    if not parameter.get("parameter_has_default"):
        return name
    return f"{name}={json.dumps(parameter.get('parameter_default'))}"


def parameter_name(parameter: dict[str, Any]) -> str:
    return parameter.get("parameter_name") or parameter.get("label") or "argument"


def complete_call(endpoints: dict[str, dict[str, Any]], name: str, by_name: bool, body: bytes) -> bytes | str:
    """The call's body with every left-out argument given its default (bytes), or what is wrong (str)."""
    endpoint = endpoints.get(f"/{name}")
    if endpoint is None:
        public = [path for path, info in endpoints.items() if info.get("api_visibility") == "public"]
        return f"This server has no endpoint /{name[:100]}; it offers {', '.join(public) or 'none'}."
    parameters = endpoint["parameters"]
    shape = signature(name, parameters)
    try:
        call = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        return f"The request body is not JSON ({error}). Send {example(name, parameters, by_name)}."
    if by_name:
        return checked_keywords(call, name, parameters, shape, body)
    return filled_positions(call, name, parameters, shape)


def example(name: str, parameters: list[dict[str, Any]], by_name: bool) -> str:
    """A body that calls the endpoint with its required arguments (placeholders for them)."""
    required = [parameter_name(parameter) for parameter in parameters if not parameter.get("parameter_has_default")]
    if by_name:
        return json.dumps({argument: "..." for argument in required})
    return json.dumps({"data": ["..." for _ in required]}) + f" with the arguments of {signature(name, parameters)}"


def filled_positions(call: Any, name: str, parameters: list[dict[str, Any]], shape: str) -> bytes | str:
    """`/call/<name>`: {"data": [...]} with the missing trailing arguments set to their defaults."""
    if not isinstance(call, dict) or "data" not in call:
        return f"The request body must be a JSON object with a list of arguments: {example(name, parameters, False)}."
    data = call["data"]
    if not isinstance(data, list):
        return f'"data" must be a list of the arguments of {shape} in order, got {type(data).__name__} {clip(data)}.'
    if len(data) > len(parameters):
        return f"{shape} takes at most {len(parameters)} arguments, got {len(data)}."
    missing = [parameter for parameter in parameters[len(data) :] if not parameter.get("parameter_has_default")]
    if missing:
        first = parameters.index(missing[0]) + 1
        return (
            f"{shape} needs its argument {parameter_name(missing[0])} (argument {first} of {len(parameters)}); "
            f'"data" had {len(data)}.'
        )
    filled = [*data, *(parameter.get("parameter_default") for parameter in parameters[len(data) :])]
    return json.dumps({**call, "data": filled}).encode()


def checked_keywords(call: Any, name: str, parameters: list[dict[str, Any]], shape: str, body: bytes) -> bytes | str:
    """`/call/v2/<name>`: the arguments by name, checked; Gradio fills in the defaults itself there."""
    if not isinstance(call, dict):
        return f"The request body must be a JSON object of arguments by name: {example(name, parameters, True)}."
    names = [parameter_name(parameter) for parameter in parameters]
    unknown = [key for key in call if key not in names and key not in KEYWORDS_GRADIO_TAKES]
    if unknown:
        hint = f" (a list of arguments goes to /gradio_api/call/{name})" if "data" in unknown else ""
        return f"{shape} has no argument named {clip(unknown[0])}{hint}."
    required = [parameter_name(parameter) for parameter in parameters if not parameter.get("parameter_has_default")]
    missing = [argument for argument in required if argument not in call]
    if missing:
        return f"{shape} needs its argument {missing[0]}."
    return body


def clip(value: Any, limit: int = 60) -> str:
    """A value as JSON, cut short: a message quotes what was sent without repeating a huge body."""
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


async def read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or None when it is longer than `limit` bytes (then not read on)."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # the client went away
            return b"".join(chunks)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def send_bytes(send: Send, status: int, content_type: str, body: bytes) -> None:
    headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_error_stream(send: Send, message: str, title: str = TITLE) -> None:
    """A refused call's stream, as Gradio streams a failed event: one `event: error`."""
    data = json.dumps({"error": message, "title": title, "visible": True})
    await send_bytes(send, 200, "text/event-stream", f"event: error\ndata: {data}\n\n".encode())


def app_kwargs() -> dict[str, Any]:
    """What `demo.launch(app_kwargs=...)` takes to put `RestCalls` in front of the page's app. A new
    dict on every call: Gradio writes into the one it is given (its lifespan handler, each launch)."""
    # QueueAdmission first: the queue's joins, and RestCalls' completed calls, meet the fair share.
    return {"middleware": [Middleware(QueueAdmission), Middleware(RestCalls)], "routes": stream_routes()}


class LaunchOptions(Mapping[str, Any]):
    """`demo.launch`'s options plus `app_kwargs` with `RestCalls`, built afresh each time it is read.

    A plain dict would hand every launch the same `app_kwargs` dict, and Gradio 6.31 writes into it
    (`App.create_app` wraps the lifespan handler already there in a new one): a process that launches
    servers again and again, as the tests do, would nest one more each time. `{**options}` and
    `demo.launch(**options)` read it as they read a dict.
    """

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.options = {key: value for key, value in options.items() if key != "app_kwargs"}

    def __getitem__(self, key: str) -> Any:
        return app_kwargs() if key == "app_kwargs" else self.options[key]

    def __iter__(self) -> Iterator[str]:
        yield from self.options
        yield "app_kwargs"

    def __len__(self) -> int:
        return len(self.options) + 1
