"""The run a tab's browser keeps (tokstep.web.browser_run), without a browser: it restores exactly
what was on the page, and any value that is not this page's run (tampered with, stale, for a model
the page does not offer) is ignored, never an error. tests/test_reload_browser.py reloads real tabs."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

import tokstep
from tokstep.core.model import LanguageModel
from tokstep.core.run_files import export_run, restore_run
from tokstep.core.sampling import SamplingSettings
from tokstep.web.browser_run import (
    DEFAULT_STORAGE_KEY,
    KEY_ENV,
    NO_RUN,
    SECRET_ENV,
    BrowserStorage,
    read_stored_run,
    stored_run,
)
from tokstep.web.constants import MAX_TOP_K
from tokstep.web.model_choice import ModelCache
from tokstep.web.page_context import PageContext
from tokstep.web.settings import PageSettings

PROMPT = "Once upon a time"
SAMPLING = SamplingSettings(temperature=0.7, top_k=40, top_p=0.9, seed=3)


@pytest.fixture
def context(tiny_lm: LanguageModel, tmp_path: Path) -> PageContext:
    """A page offering only the tiny model, as create_demo makes it."""
    return PageContext(ModelCache([tiny_lm.name], loaded=[tiny_lm]), offers_choice=True, export_folder=tmp_path)


@pytest.fixture
def run(tiny_lm: LanguageModel) -> tokstep.TokenStepper:
    """Greedy, picked, sampled and undone tokens: every way a token comes to be on the page."""
    stepper = tokstep.TokenStepper.from_text(tiny_lm, PROMPT)
    stepper.step(7)
    stepper.step(7, token_id=stepper.next_top(7)[0][3].token_id)
    stepper.step(7, sampling=SAMPLING)
    stepper.step(7)
    stepper.undo()
    return stepper


def through_the_browser(value: dict) -> dict:
    """What comes back from localStorage: the value as JSON, read again."""
    return json.loads(json.dumps(value))


def test_a_stored_run_restores_exactly_what_a_run_file_restores(context, run, tiny_lm):
    settings = PageSettings(top_k=7, sampling=SAMPLING, score_prompt=True)
    restored = read_stored_run(context, through_the_browser(stored_run(run, settings)))
    from_file = restore_run(tiny_lm, export_run(run, 7, SAMPLING, True), MAX_TOP_K)
    assert restored is not None and restored.warnings == []
    assert restored.stepper.ids == run.ids == from_file.stepper.ids
    assert restored.stepper.steps == from_file.stepper.steps
    assert [step.chosen_by for step in restored.stepper.steps] == ["greedy", "user", "sampled"]
    assert (restored.top_k, restored.sampling, restored.score_prompt) == (7, SAMPLING, True)
    assert restored.stepper.prompt_text == PROMPT


def test_a_stored_run_keeps_no_top_k_lists(run):
    """A run of many tokens stays small in the browser: restoring computes the lists again."""
    value = stored_run(run, PageSettings(top_k=MAX_TOP_K, sampling=None, score_prompt=False))
    assert all(set(step) <= {"token_id", "chosen_by", "prob", "sampling", "stop_reason"} for step in value["steps"])
    assert "text" not in value


def tampered(stored: dict, change) -> dict:
    value = copy.deepcopy(stored)
    change(value)
    return value


CHANGES = {
    "a token id outside the vocabulary": lambda v: v["steps"][0].update(token_id=10**9),
    "another probability (other weights)": lambda v: v["steps"][0].update(prob=v["steps"][0]["prob"] / 2),
    "a model the page does not offer": lambda v: v["model"].update(name="/somewhere/else"),
    "no model": lambda v: v.pop("model"),
    "prompt ids that are not the text's": lambda v: v["prompt"].update(ids=v["prompt"]["ids"][::-1]),
    "a newer version": lambda v: v.update(version=99),
    "an unknown way of choosing": lambda v: v["steps"][0].update(chosen_by="magic"),
    "a bad sampling setting": lambda v: v["settings"].update(mode="sample", sampling={"temperature": "hot"}),
    "more tokens than the context": lambda v: v["prompt"].update(ids=v["prompt"]["ids"] * 100),
    "steps that are not a list": lambda v: v.update(steps="many"),
}


@pytest.mark.parametrize("change", CHANGES.values(), ids=CHANGES.keys())
def test_a_tampered_or_stale_value_is_ignored(context, run, change):
    value = tampered(stored_run(run, PageSettings(top_k=5, sampling=None, score_prompt=False)), change)
    assert read_stored_run(context, through_the_browser(value)) is None


@pytest.mark.parametrize("value", [None, NO_RUN, "text", 3, [], {}, {"format": "tokstep-run"}, {"format": 1}])
def test_a_value_that_is_no_run_is_ignored(context, value):
    assert read_stored_run(context, value) is None


def test_the_storage_key_and_secret_come_from_the_environment():
    assert BrowserStorage.from_env({}) == BrowserStorage(DEFAULT_STORAGE_KEY, None)
    assert BrowserStorage.from_env({KEY_ENV: " my-key ", SECRET_ENV: "s3"}) == BrowserStorage("my-key", "s3")
    assert BrowserStorage.from_env({KEY_ENV: "", SECRET_ENV: ""}) == BrowserStorage(DEFAULT_STORAGE_KEY, None)
