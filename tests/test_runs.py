"""Run files (tokstep.core.run_files) at the engine level: export, restore the exact state, and a clear
RunFileError for every kind of bad file."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import tokstep
from tokstep.core.run_files import (
    FORMAT,
    MAX_RUN_BYTES,
    VERSION,
    RunFileError,
    dumps_run,
    export_run,
    parse_run,
    read_run_file,
)
from tokstep.core.run_files import restore_run as restore

PROMPT = "Once upon a time"
SEEDED = tokstep.SamplingSettings(temperature=0.9, top_k=40, top_p=0.95, seed=7)


def mixed_run(lm) -> tokstep.TokenStepper:
    """Two greedy tokens, a pick (the 3rd candidate), two seeded draws: every kind of choice."""
    stepper = tokstep.TokenStepper.from_text(lm, PROMPT)
    stepper.step(5)
    stepper.step(5)
    stepper.step(5, token_id=stepper.next_top(3)[0][2].token_id)
    stepper.step(5, sampling=SEEDED)
    stepper.step(5, sampling=SEEDED)
    return stepper


def round_trip(lm, run: dict):
    return restore(lm, parse_run(dumps_run(run)))


def test_export_records_model_settings_prompt_and_every_step(tiny_lm):
    stepper = mixed_run(tiny_lm)
    run = json.loads(dumps_run(export_run(stepper, top_k=5, sampling=SEEDED)))
    assert (run["format"], run["version"]) == (FORMAT, VERSION)
    assert run["model"]["name"] == tiny_lm.name
    assert run["settings"] == {
        "top_k": 5,
        "mode": "sample",
        "sampling": {"temperature": 0.9, "top_k": 40, "top_p": 0.95, "seed": 7},
        "score_prompt": False,
    }
    assert run["prompt"] == {"text": PROMPT, "ids": tokstep.tokenize(tiny_lm.tokenizer, PROMPT)}
    assert [s["chosen_by"] for s in run["steps"]] == ["greedy", "greedy", "user", "sampled", "sampled"]
    for recorded, step in zip(run["steps"], stepper.steps, strict=True):
        assert (recorded["token_id"], recorded["token"], recorded["rank"]) == (step.token_id, step.token, step.rank)
        assert recorded["prob"] == pytest.approx(step.prob)
        assert recorded["top"] == [[c.token_id, c.token, pytest.approx(c.prob)] for c in step.top]
    assert run["steps"][3]["sampling"]["seed"] == 7 and run["steps"][0]["sampling"] is None
    assert run["text"] == stepper.text()


def test_restore_gives_the_exact_state_back(tiny_lm):
    stepper = mixed_run(tiny_lm)
    restored = round_trip(tiny_lm, export_run(stepper, top_k=5, sampling=SEEDED, score_prompt=True))
    assert restored.stepper.ids == stepper.ids
    assert restored.stepper.prompt_length == stepper.prompt_length
    assert restored.stepper.steps == stepper.steps  # chosen_by, ranks, top-k, sampler numbers
    assert restored.stepper.text() == stepper.text()
    assert (restored.top_k, restored.sampling, restored.score_prompt) == (5, SEEDED, True)
    assert restored.warnings == []
    # It goes on as the original does: the next seeded draw is the same token.
    assert restored.stepper.step(5, sampling=SEEDED) == stepper.step(5, sampling=SEEDED)


def test_another_models_file_loads_its_ids_with_a_warning(tiny_lm):
    run = export_run(mixed_run(tiny_lm))
    run["model"]["name"] = "gpt2"
    for recorded in run["steps"]:
        recorded["prob"] = 0.5  # another model's numbers
    restored = round_trip(tiny_lm, run)
    assert restored.stepper.ids == [*run["prompt"]["ids"], *(s["token_id"] for s in run["steps"])]
    assert any("'gpt2'" in warning for warning in restored.warnings)
    assert any("probabilities differ" in warning for warning in restored.warnings)


def test_a_greedy_token_that_is_not_the_models_first_choice_is_marked_as_picked(tiny_lm):
    run = export_run(mixed_run(tiny_lm))
    second = tokstep.TokenStepper.from_text(tiny_lm, PROMPT).next_top(2)[0][1].token_id
    run["steps"][0]["token_id"] = second
    restored = round_trip(tiny_lm, run)
    assert restored.stepper.steps[0].chosen_by == "user" and restored.stepper.steps[0].rank == 2
    assert any("marked as picked" in warning for warning in restored.warnings)


def broken(run: dict, path: list, value) -> dict:
    run = json.loads(json.dumps(run))
    target = run
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return run


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (["format"], "something-else", "not a tokstep run file"),
        (["version"], 2, "newer tokstep"),
        (["version"], "1", "version '1'"),
        (["prompt", "ids"], [1, 2, 10**9], "outside this model's vocabulary"),
        (["prompt", "ids"], [], "no tokens"),
        (["steps", 1, "token_id"], -3, "step 2 has token id -3"),
        (["steps", 1, "token_id"], "12", "step 2's 'token_id'"),
        (["steps", 0, "chosen_by"], "magic", "chosen_by 'magic'"),
        (["steps", 3, "sampling"], {"temperature": -1}, "temperature"),
        (["settings", "top_k"], 500, "top_k is 500"),
        (["steps"], "many", "'steps' is missing"),
    ],
)
def test_bad_run_files_get_a_clear_message(tiny_lm, path, value, message):
    run = broken(export_run(mixed_run(tiny_lm)), path, value)
    with pytest.raises(RunFileError, match=message.replace("(", r"\(")):
        round_trip(tiny_lm, run)


def test_a_run_longer_than_the_context_is_refused(tiny_lm):
    run = export_run(mixed_run(tiny_lm))
    run["steps"] = run["steps"] * (tiny_lm.context_length // len(run["steps"]) + 1)
    with pytest.raises(RunFileError, match=f"reads at most {tiny_lm.context_length}"):
        round_trip(tiny_lm, run)


def test_malformed_and_huge_files(tmp_path):
    with pytest.raises(RunFileError, match="not valid JSON"):
        parse_run('{"format": "tokstep-run", ')
    with pytest.raises(RunFileError, match="not a tokstep run file"):
        parse_run("[1, 2, 3]")
    huge = tmp_path / "huge.json"
    huge.write_bytes(b" " * (MAX_RUN_BYTES + 1))
    with pytest.raises(RunFileError, match="at most"):
        read_run_file(huge)


def test_the_documented_example_has_the_fields_export_writes(tiny_lm):
    doc = (Path(__file__).resolve().parents[1] / "docs" / "run-format.md").read_text(encoding="utf-8")
    example = json.loads(re.search(r"```json\n(.*?)```", doc, re.S).group(1))
    run = export_run(mixed_run(tiny_lm), sampling=SEEDED)
    assert set(example) == set(run)
    assert set(example["settings"]) == set(run["settings"])
    assert set(example["steps"][0]) == set(run["steps"][0])
    for key in run["steps"][0]:
        assert f"`steps[].{key}" in doc or f", `{key}`" in doc, f"{key} is not described"
