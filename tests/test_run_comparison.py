"""Run files carry the page's comparison of two models (`comparison`, tokstep.core.run_comparison): saved
with the run, restored exactly by stepping both models again, on same- and different-tokenizer pairs; a
comparison that cannot be restored is left out with a reason and never stops the run from loading; old
files, which have none, load as before. Expected rows come from the comparison as it was stepped."""

from __future__ import annotations

import json

import pytest

import tokstep
from tokstep.core.compare import Side, align, start_pair, step_pair
from tokstep.core.model import LanguageModel
from tokstep.core.run_comparison import ComparisonError, check_comparison, comparison_field, restore_comparison
from tokstep.core.run_files import dumps_run, export_run, parse_run, restore_run
from tokstep.core.stepper import TokenStepper

pytest_plugins = ["model_choice_support"]

PROMPT = "Once upon a time"


def compared(a: LanguageModel, b: LanguageModel, steps: int) -> tuple[Side, Side]:
    pair = start_pair(TokenStepper.from_text(a, PROMPT), TokenStepper.from_text(b, PROMPT), (a.name, b.name))
    for _ in range(steps):
        assert step_pair(*pair)
    return pair


def round_trip(run: dict) -> dict:
    return parse_run(dumps_run(run))


def rows_of(a: Side, b: Side) -> list[tuple]:
    """What the page's table shows of each row: texts, agreement, and the cross probabilities."""
    return [
        (row.a_text, row.b_text, row.agree, row.ended, row.a_cross, row.b_cross)
        for row in align(a, b)
    ]  # fmt: skip


@pytest.mark.parametrize("pair", ["same tokenizer", "different tokenizers"])
def test_a_comparison_round_trips_through_a_run_file_exactly(pair, tiny_lm, other_lm, bundled_lm):
    second = other_lm if pair == "same tokenizer" else bundled_lm
    a, b = compared(tiny_lm, second, 5)
    assert a.by_position == (pair == "same tokenizer")
    stepper = TokenStepper.from_text(tiny_lm, PROMPT)
    stepper.step()
    run = round_trip(export_run(stepper, 5, comparison=(a, b)))
    record = run["comparison"]
    assert record["models"] == [tiny_lm.name, second.name]
    assert record["aligned_by"] == ("position" if a.by_position else "text")
    assert [s["token_id"] for s in record["a"]["steps"]] == a.stepper.generated_ids
    assert [s["token_id"] for s in record["b"]["steps"]] == b.stepper.generated_ids
    assert len(record["rows"]) == len(align(a, b)) and record == json.loads(json.dumps(comparison_field(a, b)))
    # The run itself loads as it would without a comparison.
    assert restore_run(tiny_lm, run).stepper.ids == stepper.ids
    models = {tiny_lm.name: tiny_lm, second.name: second}
    again_a, again_b, warnings = restore_comparison(check_comparison(run), models.__getitem__)
    assert warnings == []
    assert again_a.stepper.ids == a.stepper.ids and again_b.stepper.ids == b.stepper.ids
    assert rows_of(again_a, again_b) == rows_of(a, b)
    # And it goes on from there as the original does.
    step_pair(a, b)
    step_pair(again_a, again_b)
    assert rows_of(again_a, again_b) == rows_of(a, b)


def test_a_file_without_a_comparison_has_none_and_other_weights_say_so(tiny_lm, other_lm):
    stepper = TokenStepper.from_text(tiny_lm, PROMPT)
    assert check_comparison(export_run(stepper)) is None  # what every file before comparisons looks like
    a, b = compared(tiny_lm, tiny_lm, 4)  # a model beside itself
    checked = check_comparison(round_trip(export_run(stepper, comparison=(a, b))))
    # The file's second model now has other weights under the same name.
    greedy = [[s.token_id for s in tokstep.generate_steps(lm, PROMPT, 4)] for lm in (tiny_lm, other_lm)]
    assert greedy[0] != greedy[1]  # two random models: they write other tokens
    given = iter([tiny_lm, other_lm])
    again_a, again_b, warnings = restore_comparison(checked, lambda name: next(given))
    assert again_a.stepper.generated_ids == a.stepper.generated_ids
    assert warnings == [
        f"In the comparison, {tiny_lm.name} now writes other tokens than the file's: it shows what the model "
        "writes here."
    ]


BAD = [
    ("not an object", "it is not an object."),
    ({"models": ["a"]}, 'its "models" is not a list of two model names.'),
    ({"models": ["a", "b"], "a": {"prompt": {"ids": []}, "steps": []}}, "its 'a' has no prompt ids or no steps list."),
    (
        {"models": ["a", "b"], "a": {"prompt": {"ids": [1]}, "steps": [{"token_id": "x"}]}, "b": {}},
        "its 'a' has a token id that is not a whole number.",
    ),
]


@pytest.mark.parametrize(("record", "message"), BAD)
def test_a_bad_comparison_is_refused_with_a_reason_and_the_run_still_loads(record, message, tiny_lm):
    stepper = TokenStepper.from_text(tiny_lm, PROMPT)
    stepper.step()
    run = {**export_run(stepper), "comparison": record}
    with pytest.raises(ComparisonError) as raised:
        check_comparison(run)
    assert str(raised.value) == message
    assert restore_run(tiny_lm, round_trip(run)).stepper.ids == stepper.ids


def test_tokens_outside_a_model_s_vocabulary_are_refused_before_any_pass(tiny_lm):
    a, b = compared(tiny_lm, tiny_lm, 1)
    record = comparison_field(a, b)
    record["b"]["steps"][0]["token_id"] = tiny_lm.vocab_size + 3
    checked = check_comparison({"comparison": record})
    with pytest.raises(ComparisonError, match=f"its tokens for {tiny_lm.name} are outside that model's vocabulary"):
        restore_comparison(checked, lambda name: tiny_lm)
