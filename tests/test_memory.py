"""Memory over time: 350 short sessions one after another leave the server's memory bounded."""

from __future__ import annotations

import ctypes
import gc
import sys
from pathlib import Path

import pytest
from conftest import SETTINGS, serving
from gradio_client import Client

from tokstep.runtimes.warm_set import DEFAULT_WARM_SEQUENCES
from tokstep.web.page import create_demo

PROMPT = "Once upon a time"
SESSION_CAPACITY = 50  # smaller than the app's, so that 350 sessions go well past it
WARM_UP = 150  # three times the capacity: the session store is full and recycling before measuring
SESSIONS = 350


def rss_mib() -> float:
    """Resident memory after a full collection, with freed heap pages handed back to the OS.

    Without malloc_trim, glibc keeps freed pages in its arenas and RSS wanders by ~15 MiB
    from run to run whatever the program holds (seen in CI), which hides the signal."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_350_sessions_leave_memory_bounded(served_lm):
    demo = create_demo(served_lm)
    with serving(demo, state_session_capacity=SESSION_CAPACITY) as url:
        client = Client(url, verbose=False)

        def short_session() -> None:
            client.reset_session()  # a new session id, as a new browser tab gets
            client.predict(PROMPT, *SETTINGS, api_name="/reset")  # tokens, KV cache and next-token logits

        # The first sessions fill the session store and warm the allocator up (measured with a
        # store of 100: +16 MiB from session 100 to 200, then about 1 MiB per 100 sessions).
        for _ in range(WARM_UP):
            short_session()
        before = rss_mib()
        for _ in range(SESSIONS - WARM_UP):
            short_session()
        after = rss_mib()
        print(f"\nRSS after {WARM_UP} sessions: {before:.0f} MiB; after {SESSIONS}: {after:.0f} MiB")
        assert len(demo.state_holder.session_data) <= SESSION_CAPACITY
        # Idle sessions keep token ids, not KV caches or 50,257-float logits (200 KiB each).
        assert len(served_lm.forward.warm_sequences) <= DEFAULT_WARM_SEQUENCES
        # A leak of only the next-token logits (one float32 per vocabulary entry) would grow by
        # 200 x 50,257 x 4 bytes = 38 MiB here; allow half of that for allocator noise.
        leaked_logits_mib = (SESSIONS - WARM_UP) * served_lm.model.config.vocab_size * 4 / 2**20
        assert after - before < leaked_logits_mib / 2, (
            f"memory grew by {after - before:.1f} MiB over {SESSIONS - WARM_UP} sessions"
        )
