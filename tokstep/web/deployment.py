"""The serving side's process tweaks, each on by default in `app.py` and each with an off switch.

They change the process or the model, so library code never applies them: `tokstep.load` and
`generate_steps` in a notebook get none of them. The app applies them once, at start-up:

- packing: large fp32 CPU linear layers laid out for oneDNN once (tokstep.runtimes.packed_linear);
  batched CPU passes 1.5-2x faster. Off: `--no-pack-weights` or TOKSTEP_PACK_WEIGHTS=0.
- malloc arenas: at most 2 glibc malloc arenas (tokstep.runtimes.allocator); a class's worth of
  server threads otherwise multiplies peak memory. Off: `--malloc-arenas 0` or TOKSTEP_MALLOC_ARENAS=0.
- absent modules: optional packages Gradio looks for on every event are marked absent when not
  installed (tokstep.web.absent_modules). Off: `--no-mark-absent` or TOKSTEP_MARK_ABSENT=0.

Measured effects are in docs/performance.md ("Deployment tweaks").
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from tokstep.runtimes.allocator import SERVER_ARENAS, limit_malloc_arenas
from tokstep.runtimes.in_process import InProcessRuntime
from tokstep.web.absent_modules import mark_absent

_OFF = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class Tweaks:
    """Which process tweaks the server applies (all on by default)."""

    pack_weights: bool = True
    malloc_arenas: int = SERVER_ARENAS  # 0: glibc's own default
    mark_absent_modules: bool = True

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Tweaks:
        """The defaults, with TOKSTEP_PACK_WEIGHTS, TOKSTEP_MALLOC_ARENAS and TOKSTEP_MARK_ABSENT applied."""
        arenas = env.get("TOKSTEP_MALLOC_ARENAS", "").strip()
        if arenas and not arenas.isdigit():
            raise ValueError(f"TOKSTEP_MALLOC_ARENAS must be a whole number (0: glibc's default), got {arenas!r}.")
        return cls(
            pack_weights=env.get("TOKSTEP_PACK_WEIGHTS", "").strip().lower() not in _OFF,
            malloc_arenas=int(arenas) if arenas else SERVER_ARENAS,
            mark_absent_modules=env.get("TOKSTEP_MARK_ABSENT", "").strip().lower() not in _OFF,
        )


def apply_process_tweaks(tweaks: Tweaks) -> None:
    """The tweaks that change the process: call once, early, before the server's threads start
    (the arena limit applies to arenas made after it)."""
    if tweaks.malloc_arenas > 0:
        limit_malloc_arenas(tweaks.malloc_arenas)
    if tweaks.mark_absent_modules:
        mark_absent()


def server_runtime(tweaks: Tweaks) -> InProcessRuntime:
    """The batched in-process runtime the app serves its models with."""
    return InProcessRuntime(pack_weights=tweaks.pack_weights)
