"""A bound on how many sequences keep their KV cache in memory at once.

Every browser tab (and every API call) has its own sequence. Its KV cache costs memory
per token (GPT-2 small: 12 layers x 2 x 768 floats = 72 KiB per token in fp32), and a
tab that was closed or left idle keeps its state for a while. `WarmSet` keeps the caches
of the most recently used sequences only; the least recently used one past `capacity`
releases its cache and next-token logits. It keeps its token ids and steps, and reads
its whole sequence again (one prefill) when it is used next, so nothing is lost.
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections import OrderedDict
from typing import Protocol

DEFAULT_WARM_SEQUENCES = 32  # a class of 30 auto-running at once all stay warm


class Releasable(Protocol):
    def release(self, blocking: bool = True) -> bool: ...


class WarmSet:
    """The sequences allowed to hold a KV cache, least recently used first."""

    def __init__(self, capacity: int = DEFAULT_WARM_SEQUENCES) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}.")
        self.capacity = capacity
        self._order: OrderedDict[int, weakref.ref[Releasable]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return sum(1 for ref in self._order.values() if ref() is not None)

    def touch(self, sequence: Releasable) -> None:
        """`sequence` just used its cache: make it the most recent; cool down the oldest."""
        key = id(sequence)
        with self._lock:
            known = self._order.get(key)
            if known is None or known() is not sequence:  # new, or a dead sequence's id reused
                self._order[key] = weakref.ref(sequence, lambda _ref, key=key: self._forget(key))
            self._order.move_to_end(key)  # every step touches: no new weakref, no copy of the order
            excess = len(self._order) - self.capacity
            candidates = list(itertools.islice(self._order.items(), excess)) if excess > 0 else []
        for old_key, ref in candidates:
            old = ref()
            # A sequence busy in another thread is not idle: skip it (never wait on its lock).
            if old is None or old.release(blocking=False):
                with self._lock:
                    if self._order.get(old_key) is ref:
                        del self._order[old_key]

    def discard(self, sequence: Releasable) -> None:
        with self._lock:
            self._order.pop(id(sequence), None)

    def _forget(self, key: int) -> None:
        # Called by the garbage collector when a sequence is gone; must not block for long.
        with self._lock:
            ref = self._order.get(key)
            if ref is not None and ref() is None:
                del self._order[key]
