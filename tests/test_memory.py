"""Memory over time: 500 short sessions one after another leave the server's memory bounded."""

from __future__ import annotations

import gc
import sys
from pathlib import Path

import pytest
from conftest import SETTINGS, serving
from gradio_client import Client

from tokstep.kv_budget import DEFAULT_WARM_SEQUENCES
from tokstep.ui import create_demo

PROMPT = "Once upon a time"
SESSION_CAPACITY = 100  # smaller than the app's, so that 500 sessions go well past it
WARM_UP = 200


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_500_sessions_leave_memory_bounded(tiny_lm):
    demo = create_demo(tiny_lm)
    with serving(demo, state_session_capacity=SESSION_CAPACITY) as url:
        client = Client(url, verbose=False)

        def short_session() -> None:
            client.reset_session()  # a new session id, as a new browser tab gets
            client.predict(PROMPT, *SETTINGS, api_name="/reset")  # tokens, KV cache and next-token logits

        # The first sessions fill the session store and warm the allocator up (measured here:
        # +16 MiB from session 100 to 200, then about 1 MiB per 100 sessions).
        for _ in range(WARM_UP):
            short_session()
        gc.collect()
        before = rss_mib()
        for _ in range(500 - WARM_UP):
            short_session()
        gc.collect()
        after = rss_mib()
        print(f"\nRSS after {WARM_UP} sessions: {before:.0f} MiB; after 500: {after:.0f} MiB")
        assert len(demo.state_holder.session_data) <= SESSION_CAPACITY
        # Idle sessions keep token ids, not KV caches or 50,257-float logits (200 KiB each).
        assert len(tiny_lm.warm_sequences) <= DEFAULT_WARM_SEQUENCES
        # Unbounded, 300 more sessions would hold about 30 MiB of Gradio state and 60 MiB of logits.
        assert after - before < 15, f"memory grew by {after - before:.1f} MiB over {500 - WARM_UP} sessions"
