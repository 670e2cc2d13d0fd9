"""The ASGI types the page's middleware (tokstep.web.rest, tokstep.web.queue_admission) is written in, and
the two things both do to a request: give the app another JSON body in place of the one the client sent."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def with_json_body(scope: Scope, body: bytes) -> Scope:
    """The scope with the new body's length, and as JSON (curl's `-d` alone says it is a form)."""
    headers = [(key, value) for key, value in scope["headers"] if key not in (b"content-length", b"content-type")]
    headers += [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]
    return {**scope, "headers": headers}


def replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives the app `body` once, then waits on the client as before (a disconnect)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed
