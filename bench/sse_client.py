"""A small client of Gradio's queue protocol, as a browser tab speaks it, for bench.classroom.

A class of 60 simulated students on the server's own 2 cores must cost the server as little
CPU as possible, or the benchmark measures its clients. `gradio_client.Client` is the
friendly client for notebooks, but it is heavy for this: each Client fetches the page's
config and API info, runs threads, and its stream reader polls its queue every 50 ms
(`time.sleep(0.05)` in `gradio_client.utils.stream_sse_v1plus`), which adds up to 50 ms to
every token it reports. The page's own JavaScript client does neither. This one does what
the page does, in one asyncio loop, with no polling:

  POST /gradio_api/queue/join   {"data": [...], "fn_index": ..., "session_hash": ...} -> event_id
  GET  /gradio_api/queue/data?session_hash=...   server-sent events until the job completes:
       estimation, process_starts, process_generating (the first output whole, later ones as
       diffs of the one before), process_completed, close_stream, heartbeat

Diffs are applied with gradio_client's own `apply_diff`.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from typing import Any

import httpx
from gradio_client.utils import apply_diff


class QueueFullError(Exception):
    """The server's queue is full: Gradio's graceful refusal (HTTP 503)."""

    def __str__(self) -> str:
        return "Queue is full! Please try again."


class JobError(Exception):
    """The job ended with an error message from the app (a gr.Error) or from Gradio."""


def fn_index(url: str, api_name: str) -> int:
    """The id of the event whose API name is `api_name`, from the page's config."""
    config = httpx.get(f"{url.rstrip('/')}/config", timeout=60).raise_for_status().json()
    for dependency in config["dependencies"]:
        if dependency.get("api_name") == api_name.lstrip("/"):
            return int(dependency["id"])
    raise LookupError(f"no event named {api_name!r} on {url}")


def greedy_arguments(prompt: str, tokens: int) -> list[Any]:
    """`/generate`'s arguments for a greedy run on a page with one model, every one given, as gradio_client
    sends them: prompt, max_new_tokens, sample, temperature, top_k, top_p, seed, layers, attention."""
    return [prompt, tokens, False, 1.0, 0, 1.0, 0, False, False]


def new_session_hash() -> str:
    return secrets.token_hex(6)


async def stream_outputs(
    http: httpx.AsyncClient,
    url: str,
    event: int,
    data: list[Any],
    session_hash: str | None = None,
    output_index: int = 0,
) -> AsyncIterator[Any]:
    """Join the queue with `data` for event `event`; yield output `output_index` of each streamed update.

    Raises QueueFullError when the server refuses the job, JobError when it ends in an error."""
    session_hash = session_hash or new_session_hash()
    url = url.rstrip("/")
    # Join first, then read: the server answers the data stream with 404 for a session with
    # no job, and keeps the job's messages for the session until its stream is read.
    joined = await http.post(
        f"{url}/gradio_api/queue/join",
        json={"data": data, "fn_index": event, "session_hash": session_hash, "event_data": None, "trigger_id": None},
    )
    if joined.status_code == 503:
        raise QueueFullError()
    if joined.status_code == 422:  # refused at the door (a validator, or tokstep's fair share): its message
        detail = joined.json().get("detail") or [{}]
        raise JobError(str(joined.json().get("error") or detail[0].get("message") or joined.text[:200]))
    if joined.status_code != 200:
        raise JobError(f"join answered HTTP {joined.status_code}: {joined.text[:200]}")
    last: Any = None
    async with http.stream("GET", f"{url}/gradio_api/queue/data", params={"session_hash": session_hash}) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            message = json.loads(line[5:])
            kind = message.get("msg")
            if kind == "process_generating":
                output = message["output"]["data"][output_index]
                last = output if last is None else apply_diff(last, output)
                yield last
            elif kind == "process_completed":
                if not message.get("success", True):
                    error = message.get("output", {})
                    raise JobError(str(error.get("error") or error.get("title") or message))
                return
            elif kind == "close_stream":
                return
            elif kind == "unexpected_error":
                raise JobError(str(message.get("message")))
