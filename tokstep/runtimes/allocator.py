"""Fewer malloc arenas for the server process: a class's worth of threads otherwise multiplies
its peak memory.

glibc gives each thread that finds the main heap busy an arena of its own (up to 8 per core),
and memory freed in one arena serves only that arena. A server streams to a class from ~30
worker threads, each building tensors and JSON, so freed blocks scatter over a dozen arenas and
the process's peak grows with the thread count, not with what it holds. Measured with
`python -m bench.classroom --levels 30` on GPT-2-small shape: peak RSS 2520-2648 MiB with
glibc's default, 1855-1911 MiB with 2 arenas, at the same speed (docs/performance.md).

Call it early, before the server's threads start: the limit applies to arenas created after it.
"""

from __future__ import annotations

import ctypes

SERVER_ARENAS = 2
_M_ARENA_MAX = -8  # mallopt's parameter number in glibc's malloc.h


def limit_malloc_arenas(arenas: int = SERVER_ARENAS) -> bool:
    """Ask glibc for at most `arenas` malloc arenas; False where the C library is not glibc."""
    if arenas < 1:
        raise ValueError(f"arenas must be at least 1, got {arenas}.")
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own symbols: the C library it runs on
    except (OSError, AttributeError):  # a C library without mallopt (macOS, Windows)
        return False
    return bool(mallopt(_M_ARENA_MAX, arenas))
