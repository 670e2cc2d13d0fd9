"""Runs saved as JSON and loaded back: the "tokstep-run" format, version 1 (docs/run-format.md).

Gradio-free. `export_run` turns a stepper and the page's settings into a plain dict;
`read_run_file` / `parse_run` check a file's bytes and `restore_run` rebuilds the exact state
from it. Every problem with a file is a `RunFileError` whose message is a sentence for the
page; problems that still allow loading (another model, a greedy token that is not this
model's first choice) are returned as warnings.

Restoring never trusts the file's numbers: it re-appends the recorded token *ids* one by
one (each costs one forward pass) and lets the model compute probabilities, ranks and
top-k again, so a file can only ever choose tokens, never what the page says about them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokstep.core.model import LanguageModel
from tokstep.core.sampling import SamplingSettings
from tokstep.core.stepper import PromptError, Step, TokenStepper, check_prompt_length
from tokstep.core.tokens import tokenize

if TYPE_CHECKING:
    from tokstep.core.compare import Side

FORMAT = "tokstep-run"
VERSION = 1
# GPT-2's full context (1024 steps) with a top-20 list each is about 1 MB of JSON.
MAX_RUN_BYTES = 4_000_000
CHOSEN_BY = ("greedy", "user", "sampled")
STOP_REASONS = (None, "end_of_text", "max_new_tokens", "context_full")
# A step's optional "Why this token?" views (tokstep.core.why_records), which readers never take.
VIEW_FIELDS = ("layers", "layers_note", "attention", "attention_note")
# Recorded and recomputed probabilities further apart than this mean different weights.
PROB_TOLERANCE = 1e-3


class RunFileError(ValueError):
    """A run file that cannot be loaded; the message says what is wrong with it."""


@dataclass
class RestoredRun:
    """A run loaded from a file: the stepper at its last token and the page settings it had."""

    stepper: TokenStepper
    top_k: int
    sampling: SamplingSettings | None
    score_prompt: bool
    warnings: list[str] = field(default_factory=list)


def sampling_dict(sampling: SamplingSettings | None) -> dict[str, Any] | None:
    if sampling is None:
        return None
    return dataclasses.asdict(sampling)


def step_dict(step: Step) -> dict[str, Any]:
    """One generated token as the file records it."""
    return {
        "position": step.position,
        "token_id": step.token_id,
        "token": step.token,
        "prob": step.prob,
        "rank": step.rank,
        "entropy_bits": step.entropy,
        "chosen_by": step.chosen_by,
        "top": [[c.token_id, c.token, c.prob] for c in step.top],
        "rest_prob": step.rest_prob,
        "sampling": sampling_dict(step.sampling),
        "sampling_prob": step.sampling_prob,
        "stop_reason": step.stop_reason,
    }


def export_run(
    stepper: TokenStepper,
    top_k: int = 5,
    sampling: SamplingSettings | None = None,
    score_prompt: bool = False,
    *,
    layers: bool = False,
    attention: bool = False,
    comparison: tuple[Side, Side] | None = None,
) -> dict[str, Any]:
    """The run as a JSON-ready dict: model, page settings, prompt and every generated step, and the
    paths tried besides (`branches`, only when there are any: tokstep.core.run_branches).

    `comparison`: two models side by side (tokstep.core.compare), saved as `comparison`
    (tokstep.core.run_comparison).

    `layers` and `attention` add to each of the run's own steps what each layer would have predicted
    and where the last position looked (tokstep.core.why_records: one more pass per step). Where the
    model does not run in this process they cannot be read: tokstep.core.forward.ModelNotHere."""
    from tokstep.core.run_branches import branches_field  # here: these modules build on this one
    from tokstep.core.run_comparison import comparison_field
    from tokstep.core.why_records import why_of_steps  # here: it reads the model, which exporting need not

    lm = stepper.lm
    steps = [step_dict(step) for step in stepper.steps]
    views = why_of_steps(stepper, layers, attention) if layers or attention else None
    run = {
        "format": FORMAT,
        "version": VERSION,
        "model": {"name": lm.name, "vocab_size": lm.vocab_size, "context_length": lm.context_length},
        "settings": {
            "top_k": top_k,
            "mode": "sample" if sampling is not None else "greedy",
            "sampling": sampling_dict(sampling),
            "score_prompt": score_prompt,
        },
        "prompt": {"text": stepper.prompt_text, "ids": stepper.ids[: stepper.prompt_length]},
        "steps": steps,
        "text": stepper.text(),
    }
    if branches := branches_field(stepper):
        run["branches"] = branches
    if comparison is not None:
        run["comparison"] = comparison_field(*comparison)
    if views is not None:
        add_views(run, views)
    return run


def add_views(run: dict[str, Any], views: list[dict[str, Any]]) -> None:
    """Give the run's steps their views (`views[i]` for step i), from the last step back, while the file
    stays within MAX_RUN_BYTES, which is all a reader takes: where-it-looked grows with the sequence at
    every step (a long run's views alone would pass it), so a long run keeps the views of its last
    tokens only, and the steps before them have none."""
    room = MAX_RUN_BYTES - len(dumps_run(run).encode())
    given: list[dict[str, Any]] = []
    for step, fields in zip(reversed(run["steps"]), reversed(views), strict=True):
        text = json.dumps(fields, ensure_ascii=False, indent=1)
        # Inside the file each of its lines is indented by 3 more (the run, its steps, the step).
        cost = len(text.encode()) + 3 * text.count("\n") + 8 * len(fields)
        if cost > room:
            break
        step.update(fields)
        given.append(step)
        room -= cost
    while given and len(dumps_run(run).encode()) > MAX_RUN_BYTES:  # the estimate was short: the earliest go
        earliest = given.pop()
        for key in VIEW_FIELDS:
            earliest.pop(key, None)


def steps_with_views(run: dict[str, Any]) -> int:
    """How many of the run's steps carry views (`add_views` may have left the earliest without)."""
    return sum(1 for step in run["steps"] if any(key in step for key in VIEW_FIELDS))


def dumps_run(run: dict[str, Any]) -> str:
    """The file's text: UTF-8 JSON, indented so a person can read it."""
    return json.dumps(run, ensure_ascii=False, indent=1)


def read_run_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A run file's JSON, checked for size (before reading it) and syntax; RunFileError if bad."""
    size = Path(path).stat().st_size
    if size > MAX_RUN_BYTES:
        raise RunFileError(
            f"The file is {size / 1e6:.1f} MB; a tokstep run file is at most {MAX_RUN_BYTES / 1e6:.0f} MB. "
            "Is it the right file?"
        )
    return parse_run(Path(path).read_bytes())


def parse_run(data: bytes | str) -> dict[str, Any]:
    """JSON text as a dict with the right format and version; RunFileError otherwise."""
    if len(data) > MAX_RUN_BYTES:
        raise RunFileError(f"The file is over {MAX_RUN_BYTES / 1e6:.0f} MB: it is not a tokstep run file.")
    try:
        run = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RunFileError(f"The file is not valid JSON ({error}). Load a file saved with Export.") from None
    if not isinstance(run, dict) or run.get("format") != FORMAT:
        raise RunFileError(f'This is not a tokstep run file: it has no "format": "{FORMAT}".')
    version = run.get("version")
    if version != VERSION:
        newer = isinstance(version, int) and not isinstance(version, bool) and version > VERSION
        raise RunFileError(
            f"This run file has version {version!r}; this tokstep reads version {VERSION}"
            + (" (the file comes from a newer tokstep: update tokstep to load it)." if newer else ".")
        )
    return run


def _field(data: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    """data[key], checked to be of `kind` (bools are not numbers here); RunFileError names it."""
    value = data.get(key) if isinstance(data, dict) else None
    numeric = kind in (int, float) or kind == (int, float)
    if value is None or (numeric and isinstance(value, bool)) or not isinstance(value, kind):
        raise RunFileError(f"The run file's {where}{key!r} is missing or has the wrong type.")
    return value


def _token_id(value: Any, vocab_size: int, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < vocab_size:
        raise RunFileError(
            f"The run file's {where} has token id {value!r}, outside this model's vocabulary (0..{vocab_size - 1})."
        )
    return value


def _sampling(data: Any, where: str) -> SamplingSettings | None:
    if data is None:
        return None
    if not isinstance(data, dict):
        raise RunFileError(f"The run file's {where} sampling settings are not an object.")
    try:
        return SamplingSettings(
            temperature=data.get("temperature", 1.0),
            top_k=data.get("top_k", 0),
            top_p=data.get("top_p", 1.0),
            seed=data.get("seed", 0),
        )
    except ValueError as error:
        raise RunFileError(f"The run file's {where} sampling settings are wrong: {error}") from None


def _prompt(lm: LanguageModel, run: dict[str, Any], warnings: list[str]) -> tuple[list[int], str]:
    """The prompt's ids (authoritative) and the text to show for them."""
    prompt = _field(run, "prompt", dict, "")
    ids = [_token_id(i, lm.vocab_size, "prompt") for i in _field(prompt, "ids", list, "prompt's ")]
    text = prompt.get("text")
    try:
        check_prompt_length(lm, len(ids))
    except PromptError as error:
        raise RunFileError(f"The run file's prompt cannot be used: {error}") from None
    # The typed text is shown when it is what the ids say for this tokenizer; otherwise the ids win.
    if not isinstance(text, str) or tokenize(lm.tokenizer, text) != ids:
        text = lm.texts.decode(ids)
        warnings.append("The prompt's token ids read differently with this model's tokenizer; the ids are kept.")
    return ids, text


def _settings(run: dict[str, Any], max_top_k: int) -> tuple[int, SamplingSettings | None, bool]:
    settings = _field(run, "settings", dict, "")
    top_k = _field(settings, "top_k", int, "settings' ")
    if not 1 <= top_k <= max_top_k:
        raise RunFileError(f"The run file's top_k is {top_k}; it must be from 1 to {max_top_k}.")
    sampling = _sampling(settings.get("sampling"), "page") if settings.get("mode") == "sample" else None
    return top_k, sampling, bool(settings.get("score_prompt", False))


@dataclass(frozen=True)
class _RecordedStep:
    token_id: int
    chosen_by: str
    stop_reason: str | None
    sampling: SamplingSettings | None
    prob: float | None


def _check_step(recorded: Any, index: int, vocab_size: int) -> _RecordedStep:
    """One recorded step, checked before any forward pass runs."""
    where = f"step {index + 1}"
    if not isinstance(recorded, dict):
        raise RunFileError(f"The run file's {where} is not an object.")
    token_id = _token_id(_field(recorded, "token_id", int, f"{where}'s "), vocab_size, where)
    chosen_by = recorded.get("chosen_by")
    if chosen_by not in CHOSEN_BY:
        raise RunFileError(f"The run file's {where} has chosen_by {chosen_by!r}; it must be one of {CHOSEN_BY}.")
    stop_reason = recorded.get("stop_reason")
    if stop_reason not in STOP_REASONS:
        raise RunFileError(f"The run file's {where} has an unknown stop_reason {stop_reason!r}.")
    prob = recorded.get("prob")
    prob = float(prob) if isinstance(prob, int | float) and not isinstance(prob, bool) and math.isfinite(prob) else None
    return _RecordedStep(token_id, chosen_by, stop_reason, _sampling(recorded.get("sampling"), f"{where}'s"), prob)


def _replay(stepper: TokenStepper, recorded: _RecordedStep, top_k: int, index: int, warnings: list[str]) -> None:
    """Append one recorded token by its id and give its Step the recorded `chosen_by`.

    The engine marks a token given by id as the user's; the file says how it was really
    chosen, and a seeded draw or a greedy choice appended as an id is the same token.
    """
    step = stepper.step(top_k, token_id=recorded.token_id, sampling=recorded.sampling)
    chosen_by = recorded.chosen_by
    if chosen_by == "greedy" and step.rank != 1:
        chosen_by = "user"
        warnings.append(
            f"Token {index + 1} was the most likely one in the file, but not for this model; it is marked as picked."
        )
    differs = recorded.prob is not None and abs(recorded.prob - step.prob) > PROB_TOLERANCE
    if differs and not any("probabilities differ" in warning for warning in warnings):
        warnings.append(
            f"From token {index + 1} on, this model's probabilities differ from the file's: "
            "the page shows this model's own."
        )
    stepper.steps[-1] = replace(step, chosen_by=chosen_by, stop_reason=step.stop_reason or recorded.stop_reason)


def run_model_name(run: dict[str, Any]) -> str | None:
    """The name of the model a checked run file was made with, or None when it names none.

    A page that offers several models uses it to switch to the file's model before restoring.
    """
    model = run.get("model")
    name = model.get("name") if isinstance(model, dict) else None
    return name if isinstance(name, str) and name.strip() else None


def restore_run(lm: LanguageModel, run: dict[str, Any], max_top_k: int = 20) -> RestoredRun:
    """Rebuild the state a checked run file describes (see `parse_run`), its branches in the stepper's
    tree of paths; RunFileError if it cannot."""
    from tokstep.core.run_branches import check_branches, restore_branches  # here: it builds on this module

    warnings: list[str] = []
    model = run.get("model")
    name = model.get("name") if isinstance(model, dict) else None
    if name != lm.name:
        warnings.append(
            f"This run was made with the model {name!r}, not {lm.name!r}: its token ids are kept, "
            "and the probabilities shown are this model's."
        )
    top_k, sampling, score_prompt = _settings(run, max_top_k)
    ids, text = _prompt(lm, run, warnings)
    steps = [_check_step(recorded, i, lm.vocab_size) for i, recorded in enumerate(_field(run, "steps", list, ""))]
    if lm.context_length is not None and len(ids) + len(steps) > lm.context_length:
        raise RunFileError(
            f"The run has {len(ids) + len(steps)} tokens, but {lm.name} reads at most {lm.context_length}."
        )
    branches = check_branches(lm, run, len(ids), [step.token_id for step in steps])
    stepper = TokenStepper(lm, ids, text)
    for index, recorded in enumerate(steps):
        _replay(stepper, recorded, top_k, index, warnings)
    restore_branches(stepper, branches, top_k, warnings)
    return RestoredRun(stepper, top_k, sampling, score_prompt, warnings)
