"""The server limits glibc's malloc arenas: many worker threads otherwise multiply its peak memory."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from tokstep.runtimes import allocator
from tokstep.runtimes.allocator import limit_malloc_arenas


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt's arena limit is glibc's")
def test_the_arena_limit_is_taken_and_threads_then_share_arenas() -> None:
    # In a fresh process: 16 threads that each allocate while the others do get up to 16 arenas
    # by default, and at most the limit with it (glibc's malloc_info lists the heaps in use).
    script = """
import ctypes, importlib.util, sys, threading
# The module alone, without the tokstep package (torch, transformers): a quick start.
spec = importlib.util.spec_from_file_location("allocator", sys.argv[2])
allocator = importlib.util.module_from_spec(spec)
spec.loader.exec_module(allocator)
if sys.argv[1] == "limit":
    assert allocator.limit_malloc_arenas(2)
barrier = threading.Barrier(16)
def work():
    barrier.wait()
    blocks = [bytearray(4096) for _ in range(2000)]
    barrier.wait()
threads = [threading.Thread(target=work) for _ in range(16)]
for thread in threads: thread.start()
for thread in threads: thread.join()
libc = ctypes.CDLL(None)
libc.open_memstream.restype = ctypes.c_void_p
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
size = ctypes.c_size_t(); buffer = ctypes.c_char_p()
stream = libc.open_memstream(ctypes.byref(buffer), ctypes.byref(size))
libc.malloc_info(0, stream); libc.fclose(stream)
print(buffer.value.decode().count("<heap nr="))
"""

    def arenas(mode: str) -> int:
        command = [sys.executable, "-c", script, mode, allocator.__file__]
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return int(result.stdout.strip())

    assert arenas("limit") <= 2 < arenas("default")


def test_a_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        limit_malloc_arenas(0)
