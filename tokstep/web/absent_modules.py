"""Marking optional packages that are not installed as absent, so looking for them is free.

Gradio looks for optional packages while it serves, by importing them: matplotlib twice around
every event it runs (each token of a stream is one), polars for every table it sends. Python
remembers a module it imported, but not one it failed to find, so each of those looks scans
`sys.path` again: about 90 µs each on 2 CPU cores, on the server's event loop, whose time every
user shares. A profile of a server streaming `/generate` found a quarter of the event loop's
busy time there (docs/performance.md, "Server").

`sys.modules[name] = None` is Python's own record of "this module cannot be imported": an
import of it then raises ImportError at once, and `importlib.util.find_spec` returns None, as
they would after the full search. A package that is installed is never marked; one installed
later, while the server runs, can be imported only after it restarts.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterable

# What Gradio's serving code tries to import on each event or table (gradio 6.31:
# gradio.utils.MatplotlibBackendMananger, gradio.components.dataframe).
LOOKED_UP_WHILE_SERVING = ("matplotlib", "polars")


def mark_absent(names: Iterable[str] = LOOKED_UP_WHILE_SERVING) -> list[str]:
    """Record each top-level package in `names` that is not installed as absent; return those marked.

    Installed packages (and ones already imported or already marked) are left as they are."""
    marked = []
    for name in names:
        if "." in name:
            raise ValueError(f"only top-level packages can be marked absent, got {name!r}")
        if name in sys.modules:
            continue
        if importlib.util.find_spec(name) is None:
            sys.modules[name] = None  # type: ignore[assignment]  (the import system's "not importable")
            marked.append(name)
    return marked
