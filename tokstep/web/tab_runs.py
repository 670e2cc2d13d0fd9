"""`TabRuns`: the sequences each open tab is stepping, so that closing the tab stops them at once.

Gradio notices a closed tab (its heartbeat connection drops) and runs the page's `unload` event,
but it cannot stop a step already running in a worker thread, and an unload handler gets no
session state. So the page's stepping events note their stepper here under the tab's session
hash, and the unload event stops that tab's runs: a step waiting for a serving engine's answer
is cancelled (its request aborted), and no further step is taken. Steppers are held weakly: the
tab's state owns them.
"""

from __future__ import annotations

import threading
import weakref

import gradio as gr

from tokstep.core.stepper import TokenStepper


class TabRuns:
    """The steppers of each open tab, by Gradio session hash."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_tab: dict[str, weakref.WeakSet[TokenStepper]] = {}

    def note(self, request: gr.Request, stepper: TokenStepper) -> TokenStepper:
        """Remember that the tab of `request` steps `stepper` (no tab: an API call; nothing kept)."""
        tab = getattr(request, "session_hash", None)
        if tab is None:
            return stepper
        with self._lock:
            for gone in [key for key, steppers in self._by_tab.items() if not steppers]:
                del self._by_tab[gone]  # tabs whose steppers are all gone
            self._by_tab.setdefault(tab, weakref.WeakSet()).add(stepper)
        return stepper

    def stop(self, request: gr.Request) -> None:
        """The tab of `request` was closed: stop its runs (see TokenStepper.stop_runs)."""
        tab = getattr(request, "session_hash", None)
        with self._lock:
            steppers = list(self._by_tab.pop(tab, ()))
        for stepper in steppers:
            stepper.stop_runs()

    def __len__(self) -> int:
        """How many tabs have a stepper noted."""
        with self._lock:
            return sum(1 for steppers in self._by_tab.values() if steppers)
