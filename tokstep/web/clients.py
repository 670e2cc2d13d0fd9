"""Who a client is, for its fair share of the server (tokstep.web.client_limits).

Two kinds, each named by what a flood cannot multiply cheaply:

  - a page session (`session_for`): Gradio's session hash, one per open tab. Students of one class
    often share one public address (a school's NAT), so the page's Auto-runs are counted per tab.
  - an API caller (`address_for`): the address the request came from. gradio_client gives each
    `Client` a session hash of its own, and a script can make a hundred of them, so `/generate`
    counts by address: a flood from one address is one client however many sessions it opens.

Behind a proxy (a Hugging Face Space, a load balancer) every request comes from the proxy's address,
and the caller's is the first hop of the `X-Forwarded-For` header. That header is whatever the
request carries, so it is read only where the operator says a proxy in front sets it
(`trust_forwarded_for`; `--trust-forwarded-for`, TOKSTEP_TRUST_FORWARDED_FOR); otherwise anyone could
name themselves anybody. Even then, a proxy that passes on a header the caller sent (appending its
own hop after it) lets the caller choose its first hop: trust it behind a proxy that sets the header.

Both functions take a `gr.Request`, or a Starlette request (tokstep.web.stream_route): anything with
`headers` and `client.host`.
"""

from __future__ import annotations

from typing import Any

API, PAGE = "address", "session"  # the kinds of client, first in every client's key
UNKNOWN = "unknown"  # no address at all (a request made in-process, e.g. by a test client)


def address_for(request: Any, trust_forwarded_for: bool) -> tuple[str, str]:
    """The API caller's key: ("address", its address); the first X-Forwarded-For hop when trusted."""
    if trust_forwarded_for:
        forwarded = _header(request, "x-forwarded-for")
        first = forwarded.split(",")[0].strip() if forwarded else ""
        if first:
            return API, first
    client = getattr(request, "client", None) if request is not None else None
    return API, getattr(client, "host", None) or UNKNOWN


def session_for(request: Any, trust_forwarded_for: bool) -> tuple[str, str]:
    """The page session's key: ("session", Gradio's session hash); the address's key for a request
    with no session (a call made without Gradio's queue)."""
    session = getattr(request, "session_hash", None) if request is not None else None
    if session:
        return PAGE, str(session)
    return address_for(request, trust_forwarded_for)


def _header(request: Any, name: str) -> str | None:
    headers = getattr(request, "headers", None) if request is not None else None
    return headers.get(name) if headers is not None else None
