"""Presets by link (tokstep.core.presets) at the engine level: parsing, stepping, and links that
reproduce a state."""

from __future__ import annotations

from urllib.parse import parse_qsl

import pytest

import tokstep
from tokstep.core.presets import (
    MAX_LINK_PROMPT_CHARS,
    MAX_LINK_STEPS,
    Preset,
    apply_preset,
    link_reproduces,
    parse_preset,
    preset_query,
)

PROMPT = "Once upon a time"
DEFAULT = "The default prompt"


def greedy(lm, prompt: str, n: int) -> list[int]:
    return [step.token_id for step in tokstep.generate_steps(lm, prompt, max_new_tokens=n)]


def test_a_link_opens_the_prompt_stepped_greedily(tiny_lm):
    preset = parse_preset({"prompt": PROMPT, "steps": "4", "__theme": "dark"})
    assert preset == Preset(prompt=PROMPT, steps=4)
    stepper, problems = apply_preset(tiny_lm, preset, DEFAULT)
    assert problems == []
    assert stepper.generated_ids == greedy(tiny_lm, PROMPT, 4)
    assert [s.chosen_by for s in stepper.steps] == ["greedy"] * 4


def test_a_sampling_link_repeats_the_seeded_draws(tiny_lm):
    preset = parse_preset({"prompt": PROMPT, "steps": "5", "mode": "sample", "seed": "3", "temperature": "1.5"})
    assert preset.sampling == tokstep.SamplingSettings(temperature=1.5, seed=3)
    stepper, _ = apply_preset(tiny_lm, preset, DEFAULT)
    expected = tokstep.generate_steps(tiny_lm, PROMPT, max_new_tokens=5, sampling=preset.sampling)
    assert stepper.generated_ids == [step.token_id for step in expected]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"steps": "three"}, "`steps` must be a whole number from 0 to"),
        ({"steps": str(MAX_LINK_STEPS + 1)}, f"got {MAX_LINK_STEPS + 1}"),
        ({"steps": "-1"}, "got -1"),
        ({"prompt": "x" * (MAX_LINK_PROMPT_CHARS + 1)}, "the default prompt is used"),
        ({"prompt": "   "}, "empty"),
        ({"mode": "sample", "temperature": "hot"}, "`temperature` must be a number"),
        ({"mode": "sample", "top_p": "7"}, "top_p must be"),
        ({"mode": "creative"}, "`mode` must be"),
    ],
)
def test_bad_values_fall_back_with_a_sentence(params, message):
    preset = parse_preset(params)
    assert len(preset.problems) == 1 and message in preset.problems[0]
    assert preset.steps == 0 or "steps" not in params
    assert preset.sampling is None


def test_a_prompt_over_the_context_falls_back_to_the_default(tiny_lm):
    stepper, problems = apply_preset(tiny_lm, parse_preset({"prompt": "word " * 200, "steps": "2"}), DEFAULT)
    assert stepper.prompt_text == DEFAULT and len(stepper.steps) == 2
    assert "default prompt" in problems[0]


def test_steps_stop_when_the_context_is_full(tiny_lm):
    stepper, problems = apply_preset(tiny_lm, parse_preset({"prompt": PROMPT, "steps": "200"}), DEFAULT)
    assert len(stepper.ids) == tiny_lm.context_length
    assert f"after {len(stepper.steps)}" in problems[-1]


def test_the_query_of_a_state_reopens_the_same_tokens(tiny_lm):
    sampling = tokstep.SamplingSettings(top_p=0.9, seed=11)
    stepper, _ = apply_preset(tiny_lm, Preset(prompt="A dog & a cat?", steps=3, sampling=sampling), DEFAULT)
    query = preset_query(stepper, sampling)
    assert link_reproduces(stepper, sampling)
    reopened, problems = apply_preset(tiny_lm, parse_preset(dict(parse_qsl(query[1:]))), DEFAULT)
    assert problems == [] and reopened.ids == stepper.ids and reopened.prompt_text == "A dog & a cat?"
    # A token picked by hand is not in a link.
    stepper.step(5, token_id=stepper.next_top(2)[0][1].token_id)
    assert not link_reproduces(stepper, sampling)
