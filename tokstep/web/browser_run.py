"""The tab's run kept in the browser (`gr.BrowserState`, the browser's localStorage), so that a
reloaded tab gets it back, restored exactly as a run file is (tokstep.core.run_files).

What the browser keeps is a run file's data less what restoring computes again: the model's name,
the page's settings, the prompt's text and ids, and for each generated token its id, how it was
chosen (greedy, picked, sampled and with which settings), why a run stopped there, and the
probability the model gave it (restoring compares it, so a model with other weights under the same
name is noticed); the paths tried besides (a run file's `branches`) the same way, so a reload gets
the tree of paths back too. A long run stays small: no top-k lists, no texts of tokens.

After every event that changes the tab's sequence (Step, Auto-run's end, Undo, a pick, Reset, the
prompt, a setting, the model, a run file), `on_store` writes the run to the tab's BrowserState; on
the page's first load, tokstep.web.share_handlers.on_load restores it with `read_stored_run`, unless
the page's URL is a link (a link's state wins; a run file loaded later replaces it too). A stored
value that is not a run, names a model the page does not offer or that does not load, or does not
restore exactly on this model (other weights, another tokenizer) is ignored without a word: the
page starts from its prompt, as without one.

Gradio encrypts the value with a secret and keeps it under a storage key (`BrowserStorage`). Without
a secret Gradio draws one at each start, so after a restart the tabs' runs can no longer be read
(they are replaced at the next event); an operator who pins the secret (and the key) keeps them
across restarts and across the replicas of one deployment. The secret is sent to the page, which
decrypts the value itself: it keeps different apps' values apart, but it is no secret from the
visitor, who can change the value, so a stored run is checked as strictly as an uploaded run file:
only the ids are taken from it, and every probability is computed again.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import gradio as gr
from gradio.components import Component

from tokstep.core.model import ModelLoadError
from tokstep.core.run_files import FORMAT, RestoredRun, RunFileError, export_run, parse_run, restore_run, run_model_name
from tokstep.core.stepper import TokenStepper
from tokstep.web.constants import MAX_TOP_K
from tokstep.web.page_context import PageContext
from tokstep.web.page_layout import PageUI
from tokstep.web.settings import PageSettings

LOG = logging.getLogger("tokstep")

DEFAULT_STORAGE_KEY = "tokstep-run"  # fixed, so that a restart does not leave the old value behind under another key
KEY_ENV, SECRET_ENV = "TOKSTEP_BROWSER_STATE_KEY", "TOKSTEP_BROWSER_STATE_SECRET"
# What a tab with no sequence (a prompt the model cannot take) keeps: Gradio's BrowserState never
# writes a value that is empty (None, {}), so "nothing to restore" needs a value of its own.
NO_RUN = {"format": FORMAT, "run": None}
# A step as the browser keeps it: what restore_run reads (tokstep.core.run_files).
STORED_STEP_FIELDS = ("token_id", "chosen_by", "prob", "sampling", "stop_reason")


@dataclass(frozen=True)
class BrowserStorage:
    """Where the browser keeps the tab's run: the localStorage key and the secret Gradio encrypts it with."""

    key: str = DEFAULT_STORAGE_KEY
    secret: str | None = None  # None: Gradio draws one at each start, so a restart cannot read what tabs kept

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> BrowserStorage:
        """The defaults, with TOKSTEP_BROWSER_STATE_KEY and TOKSTEP_BROWSER_STATE_SECRET applied (empty: unset)."""
        return cls(key=env.get(KEY_ENV, "").strip() or DEFAULT_STORAGE_KEY, secret=env.get(SECRET_ENV) or None)


def stored_run(stepper: TokenStepper, settings: PageSettings) -> dict[str, Any]:
    """The run as the browser keeps it: a run file (tokstep.core.run_files) with only what restoring reads."""
    run = export_run(stepper, settings.top_k, settings.sampling, settings.score_prompt)
    run["steps"] = _stored_steps(run["steps"])
    for branch in run.get("branches", ()):  # the paths tried besides (tokstep.core.run_branches), as small
        branch["steps"] = _stored_steps(branch["steps"])
    del run["text"]  # the ids give it
    return run


def _stored_steps(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{key: step[key] for key in STORED_STEP_FIELDS if step[key] is not None} for step in steps]


def read_stored_run(context: PageContext, value: Any) -> RestoredRun | None:
    """The run a tab's browser kept, restored on its model; None when there is none or it cannot be
    restored exactly on a model this page offers (see the module's docstring). Never raises for the
    value: anything in it is what a visitor could have written."""
    if not isinstance(value, dict) or value.get("format") != FORMAT or value == NO_RUN:
        return None
    try:
        run = parse_run(json.dumps(value))  # a run file's checks: its size, format and version
        name = run_model_name(run)
        if name is None or not context.models.is_allowed(name):
            raise RunFileError(f"its model {name!r} is not offered here")
        restored = restore_run(context.models.get(name), run, MAX_TOP_K)
    except (RunFileError, ModelLoadError) as error:
        LOG.info("tokstep: a tab's stored run was not restored: %s", error)
        return None
    if restored.warnings:  # made with other weights or another tokenizer under that name: not this run
        LOG.info("tokstep: a tab's stored run was not restored: %s", " ".join(restored.warnings))
        return None
    return restored


def on_store(ui: PageUI, context: PageContext, values: dict[Component, Any]) -> dict[Component, Any]:
    """After an event: the browser keeps the tab's run (`NO_RUN` when the tab has no sequence)."""
    stepper = values[ui.session.state]
    if stepper is None:
        return {ui.session.stored: NO_RUN}
    try:
        settings = PageSettings.from_inputs(values)
    except gr.Error:  # the event before said what is wrong with them; the browser keeps what it had
        return gr.skip()
    return {ui.session.stored: stored_run(stepper, settings)}
