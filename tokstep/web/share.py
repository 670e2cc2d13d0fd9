"""`--share`: a temporary public gradio link where the network allows it, and where it does
not, one clear line while the local server keeps running.

Gradio 6.31 on its own, offline: the local server starts first, then `launch(share=True)`
asks api.gradio.app for a tunnel (an httpx request with a 30 s timeout, retried by nobody),
may try to download its tunnel binary, and on failure prints several lines about internet
connections and antivirus software. Where DNS fails at once this is quick; where packets
are silently dropped, start-up waits the full timeout. So tokstep first asks the same
server with a short timeout, and only asks Gradio for a link when it answers.
"""

from __future__ import annotations

import sys
from typing import Any

import gradio as gr
import httpx
from gradio import networking

SHARE_PROBE_TIMEOUT_S = 3.0  # long enough for a slow network, short enough not to stall start-up


def share_server_reachable(timeout: float = SHARE_PROBE_TIMEOUT_S) -> bool:
    """Whether Gradio's share server answers at all (any HTTP status) within `timeout` seconds."""
    try:
        httpx.get(networking.GRADIO_API_SERVER, timeout=timeout)
    except httpx.HTTPError:
        return False
    return True


def no_share_message(local_url: str) -> str:
    return f"tokstep: could not open a share link (no network?); the local server keeps running at {local_url}"


def launch(demo: gr.Blocks, host: str | None, port: int | None, share: bool, options: dict[str, Any]) -> None:
    """Start the server, with a share link when asked and possible; block until interrupted."""
    with_link = share and share_server_reachable()
    demo.launch(server_name=host, server_port=port, share=with_link, prevent_thread_lock=True, **options)
    if share and not demo.share_url:
        print(no_share_message(demo.local_url), file=sys.stderr, flush=True)
    demo.block_thread()
