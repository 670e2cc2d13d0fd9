"""A run file's optional `comparison`: two models side by side (tokstep.core.compare) beside the run.

Gradio-free. The page's **Two models side by side** writes the page's prompt with two models at once;
Export saves that comparison with the run and Load a run puts it back:

    "comparison": {
      "models": ["gpt2", "distilgpt2"],
      "aligned_by": "position",                       # or "text": how the rows line the tokens up
      "a": {"prompt": {"text": "...", "ids": [...]}, "steps": [...]},   # model A's own tokens
      "b": {"prompt": {"text": "...", "ids": [...]}, "steps": [...]},   # in the format of the run's steps
      "rows": [{"a": " there", "b": " there", "agree": true, "ended": true,
                "a_prob_of_b": null, "b_prob_of_a": null}, ...]
    }

`rows` are what the page's table showed: each model's text in the row, whether they agree, and where
they disagree each model's probability of the other's choice (`{"token_id", "token", "prob",
"first_of_text"}`; `first_of_text`: the first token of the other's text in this model's tokenizer).

Restoring takes only the models' names, the prompts' ids and how many tokens each model wrote, as a
run's restore does (tokstep.core.run_files): both models step again, greedily, as the comparison
stepped them, so every number is the models' own; the rows are worked out again. The same models
write the same tokens; models that write other ones (other weights under the same name) keep what they
write now, with a warning. A comparison that cannot be restored never stops the run from loading: it
is left out, with a warning that says why (`ComparisonError`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tokstep.core.compare import Cross, Side, align, start_pair, step_pair
from tokstep.core.model import LanguageModel
from tokstep.core.run_files import step_dict
from tokstep.core.stepper import PromptError, TokenStepper, check_prompt_length

MAX_COMPARISON_TOKENS = 1024  # tokens one model of a file's comparison may have written


class ComparisonError(ValueError):
    """A comparison in a run file that cannot be restored; the message says why, in one sentence."""


def cross_dict(cross: Cross | None) -> dict[str, Any] | None:
    if cross is None:
        return None
    return {"token_id": cross.token_id, "token": cross.token, "prob": cross.prob, "first_of_text": cross.first_of_text}


def side_dict(side: Side) -> dict[str, Any]:
    stepper = side.stepper
    return {
        "prompt": {"text": stepper.prompt_text, "ids": stepper.ids[: stepper.prompt_length]},
        "steps": [step_dict(step) for step in stepper.steps],
    }


def comparison_field(a: Side, b: Side) -> dict[str, Any]:
    """The comparison of `a` and `b` as a run file's `comparison`."""
    return {
        "models": [a.name, b.name],
        "aligned_by": "position" if a.by_position else "text",
        "a": side_dict(a),
        "b": side_dict(b),
        "rows": [
            {
                "a": row.a_text, "b": row.b_text, "agree": row.agree, "ended": row.ended,
                "a_prob_of_b": cross_dict(row.a_cross), "b_prob_of_a": cross_dict(row.b_cross),
            }
            for row in align(a, b)
        ],
    }  # fmt: skip


@dataclass(frozen=True)
class CheckedSide:
    """One model's half of a file's comparison, checked: what restoring it needs."""

    name: str
    prompt_text: str
    prompt_ids: tuple[int, ...]
    generated: tuple[int, ...]  # the token ids it wrote, in order


def _side(record: Any, key: str, name: str) -> CheckedSide:
    side = record.get(key)
    prompt = side.get("prompt") if isinstance(side, dict) else None
    ids = prompt.get("ids") if isinstance(prompt, dict) else None
    steps = side.get("steps") if isinstance(side, dict) else None
    if not isinstance(ids, list) or not ids or not isinstance(steps, list):
        raise ComparisonError(f"its {key!r} has no prompt ids or no steps list.")
    generated = [step.get("token_id") if isinstance(step, dict) else None for step in steps]
    if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in [*ids, *generated]):
        raise ComparisonError(f"its {key!r} has a token id that is not a whole number.")
    if len(generated) > MAX_COMPARISON_TOKENS:
        raise ComparisonError(
            f"its {key!r} has {len(generated)} tokens; a comparison holds at most {MAX_COMPARISON_TOKENS}."
        )
    text = prompt.get("text")
    return CheckedSide(name, text if isinstance(text, str) else "", tuple(ids), tuple(generated))


def check_comparison(run: dict[str, Any]) -> tuple[CheckedSide, CheckedSide] | None:
    """The run's comparison, checked before any pass; None when it has none. ComparisonError if bad."""
    record = run.get("comparison")
    if record is None:
        return None
    if not isinstance(record, dict):
        raise ComparisonError("it is not an object.")
    names = record.get("models")
    if not isinstance(names, list) or len(names) != 2 or not all(isinstance(n, str) and n.strip() for n in names):
        raise ComparisonError('its "models" is not a list of two model names.')
    return _side(record, "a", names[0].strip()), _side(record, "b", names[1].strip())


def _stepper(lm: LanguageModel, side: CheckedSide) -> TokenStepper:
    if any(i >= lm.vocab_size for i in [*side.prompt_ids, *side.generated]):
        raise ComparisonError(f"its tokens for {side.name} are outside that model's vocabulary.")
    try:
        check_prompt_length(lm, len(side.prompt_ids))
    except PromptError as error:
        raise ComparisonError(f"its prompt for {side.name} does not fit that model: {error}") from None
    if lm.context_length is not None and len(side.prompt_ids) + len(side.generated) > lm.context_length:
        raise ComparisonError(f"it has more tokens for {side.name} than that model reads ({lm.context_length}).")
    text = side.prompt_text or lm.texts.decode(list(side.prompt_ids))
    return TokenStepper(lm, list(side.prompt_ids), text)


def restore_comparison(
    checked: tuple[CheckedSide, CheckedSide], lm_for: Callable[[str], LanguageModel]
) -> tuple[Side, Side, list[str]]:
    """Both models stepped again as the file's comparison stepped them (see the module docstring), with
    warnings. `lm_for` gives a model by name (it may refuse: its error goes on). ComparisonError if the
    file's tokens do not fit the models."""
    first, second = checked
    a, b = start_pair(_stepper(lm_for(first.name), first), _stepper(lm_for(second.name), second),
                      (first.name, second.name))  # fmt: skip
    wanted = len(first.generated), len(second.generated)
    # Each Step both writes at least one token: as many calls as tokens bound the replay.
    for _ in range(sum(wanted)):
        if len(a.steps) >= wanted[0] and len(b.steps) >= wanted[1]:
            break
        if not step_pair(a, b):
            break
    warnings = []
    for side, recorded in ((a, first), (b, second)):
        written = tuple(side.stepper.generated_ids)
        if written != recorded.generated:
            warnings.append(
                f"In the comparison, {side.name} now writes other tokens than the file's: it shows what the model "
                "writes here."
            )
    return a, b, warnings
