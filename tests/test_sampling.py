"""Seeded sampling: the filters agree with transformers' own warpers on a real tiny model's
logits, draws are reproducible from (seed, position), and a Step keeps the model's true
probabilities beside the sampler's."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

import tokstep
from tokstep.core.sampling import (
    SamplingSettings,
    apply_temperature,
    filter_top_k,
    filter_top_p,
    sample_token,
    sampling_probs,
)
from tokstep.core.stepper import TokenStepper

PROMPT = "Once upon a time, generative models"


def full_forward_logits(lm, ids) -> torch.Tensor:
    """The last position's logits (vocab,) from one uncached pass over the whole sequence."""
    with torch.inference_mode():
        return lm.model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1]


def transformers_probs(logits: torch.Tensor, settings: SamplingSettings) -> torch.Tensor:
    """What `generate(do_sample=True)` draws from: its warpers in its order, then softmax."""
    scores = logits.float()[None]  # (1, vocab): the warpers work on batches
    warpers = [TemperatureLogitsWarper(float(settings.temperature))]
    if settings.top_k > 0:
        warpers.append(TopKLogitsWarper(settings.top_k))
    if settings.top_p < 1.0:
        warpers.append(TopPLogitsWarper(settings.top_p))
    for warper in warpers:
        scores = warper(None, scores)
    return torch.softmax(scores, dim=-1)[0]  # (vocab,)


@pytest.fixture(scope="module")
def real_logits(tiny_lm) -> list[torch.Tensor]:
    """Next-token logits of the tiny model at four points of a greedy run."""
    stepper = TokenStepper.from_text(tiny_lm, PROMPT)
    logits = []
    for _ in range(4):
        logits.append(full_forward_logits(tiny_lm, stepper.ids))
        stepper.step()
    return logits


SETTINGS = [
    SamplingSettings(),
    SamplingSettings(temperature=0.7),
    SamplingSettings(temperature=1.5),
    SamplingSettings(top_k=1),
    SamplingSettings(top_k=40),
    SamplingSettings(top_p=0.5),
    SamplingSettings(top_p=0.9),
    SamplingSettings(temperature=0.7, top_p=0.9),
    SamplingSettings(temperature=1.5, top_k=100, top_p=0.9),
    SamplingSettings(temperature=3.0, top_k=5000, top_p=0.5),
]


@pytest.mark.parametrize("settings", SETTINGS, ids=repr)
def test_filters_agree_with_transformers_warpers(real_logits, settings):
    kept_sizes = []
    for logits in real_logits:
        ours = sampling_probs(logits, settings)
        theirs = transformers_probs(logits, settings)
        assert torch.equal(ours > 0, theirs > 0), "the same tokens are kept"
        assert torch.allclose(ours, theirs, rtol=0, atol=1e-6)
        assert float(ours.sum()) == pytest.approx(1.0, abs=1e-5)
        kept_sizes.append(int((ours > 0).sum()))
    if settings.top_k == 1:
        assert kept_sizes == [1] * 4
    elif settings.top_k == 0 and settings.top_p == 1.0:
        assert min(kept_sizes) > 40_000, "no filter: (nearly) every token stays"
    else:
        assert max(kept_sizes) > 1, "the check should cover sets of more than one token"


def test_the_steps_one_at_a_time(real_logits):
    logits = real_logits[0]
    assert torch.equal(apply_temperature(logits, 2.0), logits / 2.0)
    kept = filter_top_k(logits, 3)
    assert torch.equal(torch.isfinite(kept).nonzero()[:, 0].sort().values, torch.topk(logits, 3).indices.sort().values)
    assert torch.equal(filter_top_k(logits, 0), logits), "0 turns top-k off"
    assert torch.equal(filter_top_p(logits, 1.0), logits), "1 turns top-p off"
    # The nucleus: the most likely tokens until their mass reaches p, and no more.
    nucleus = filter_top_p(logits, 0.5)
    probs = torch.softmax(logits, dim=-1)
    kept_mass = float(probs[torch.isfinite(nucleus)].sum())
    smallest_kept = float(probs[torch.isfinite(nucleus)].min())
    assert kept_mass >= 0.5 > kept_mass - smallest_kept
    assert float(probs[~torch.isfinite(nucleus)].max()) <= smallest_kept


def test_top_p_always_keeps_the_most_likely_token(real_logits):
    kept = filter_top_p(real_logits[0], 1e-9)
    assert torch.isfinite(kept).nonzero()[:, 0].tolist() == [int(torch.argmax(real_logits[0]))]


def test_same_seed_gives_the_same_tokens(tiny_lm):
    settings = SamplingSettings(temperature=1.5, top_p=0.95, seed=7)
    first = [s.token_id for s in tokstep.generate_steps(tiny_lm, PROMPT, max_new_tokens=12, sampling=settings)]
    second = [s.token_id for s in tokstep.generate_steps(tiny_lm, PROMPT, max_new_tokens=12, sampling=settings)]
    assert first == second
    greedy = [s.token_id for s in tokstep.generate_steps(tiny_lm, PROMPT, max_new_tokens=12)]
    assert first != greedy, "at temperature 1.5 the draws should leave the greedy path"


def test_different_seeds_give_different_tokens(tiny_lm):
    runs = {
        tuple(
            s.token_id
            for s in tokstep.generate_steps(
                tiny_lm, PROMPT, max_new_tokens=12, sampling=SamplingSettings(temperature=1.5, seed=seed)
            )
        )
        for seed in range(4)
    }
    assert len(runs) == 4


def test_sampled_tokens_are_inside_the_filtered_set(tiny_lm):
    settings = SamplingSettings(temperature=1.2, top_k=20, top_p=0.8, seed=3)
    prompt_ids = tokstep.tokenize(tiny_lm.tokenizer, PROMPT)
    steps = list(tokstep.generate_steps(tiny_lm, prompt_ids, max_new_tokens=15, sampling=settings))
    ids = list(prompt_ids)
    ranks = set()
    for step in steps:
        logits = full_forward_logits(tiny_lm, ids)
        drawn_from = sampling_probs(logits, settings)
        assert step.chosen_by == "sampled"
        assert float(drawn_from[step.token_id]) > 0
        assert step.sampling == settings
        assert step.sampling_prob == pytest.approx(float(drawn_from[step.token_id]), abs=1e-6)
        assert step.sampling_kept == int((drawn_from > 0).sum()) <= 20
        ranks.add(step.rank)
        ids.append(step.token_id)
    assert ranks != {1}, "15 draws at temperature 1.2 should not all be the most likely token"


def test_a_step_keeps_the_models_true_probabilities(tiny_lm):
    settings = SamplingSettings(temperature=0.5, top_k=3, seed=11)
    stepper = TokenStepper.from_text(tiny_lm, PROMPT)
    for _ in range(5):
        probs = torch.softmax(full_forward_logits(tiny_lm, stepper.ids).float(), dim=-1)  # (vocab,)
        drawn_from = sampling_probs(full_forward_logits(tiny_lm, stepper.ids), settings)
        step = stepper.step(top_k_size=6, sampling=settings)
        values, indices = torch.topk(probs, 6)
        assert [c.token_id for c in step.top] == indices.tolist()
        assert [c.prob for c in step.top] == pytest.approx(values.tolist(), abs=1e-6)
        assert step.prob == pytest.approx(float(probs[step.token_id]), abs=1e-6)
        assert step.rest_prob == pytest.approx(1.0 - float(values.sum()), abs=1e-6)
        assert step.rank == int((probs > probs[step.token_id]).sum()) + 1
        # The second column: what the sampler gave each shown token; zero outside the top 3.
        # (1e-5: the cached passes differ from one uncached pass by ~1e-6 in the logits, and
        # temperature 0.5 doubles that.)
        assert step.sampling_top == pytest.approx([float(drawn_from[c.token_id]) for c in step.top], abs=1e-5)
        assert step.sampling_top[3:] == [0.0, 0.0, 0.0]
        assert sum(step.sampling_top) == pytest.approx(1.0, abs=1e-6)


def test_top_k_1_sampling_is_greedy(tiny_lm):
    greedy = [s.token_id for s in tokstep.generate_steps(tiny_lm, PROMPT, max_new_tokens=15)]
    for seed in (0, 1):
        settings = SamplingSettings(temperature=2.0, top_k=1, seed=seed)
        steps = list(tokstep.generate_steps(tiny_lm, PROMPT, max_new_tokens=15, sampling=settings))
        assert [s.token_id for s in steps] == greedy
        assert all(s.sampling_prob == 1.0 and s.rank == 1 for s in steps)


def test_a_user_token_wins_over_sampling_and_still_gets_the_sampler_column(tiny_lm):
    stepper = TokenStepper.from_text(tiny_lm, PROMPT)
    runner_up = stepper.next_top(2)[0][1].token_id
    step = stepper.step(token_id=runner_up, sampling=SamplingSettings(top_k=1))
    assert step.chosen_by == "user" and step.token_id == runner_up and step.rank == 2
    assert step.sampling_prob == 0.0, "top_k=1 would never have drawn the runner-up"
    assert step.sampling_top[:2] == [1.0, 0.0]


def test_sample_token_follows_the_distribution_and_depends_only_on_seed_and_position():
    probs = torch.tensor([0.5, 0.0, 0.3, 0.2, 0.0])
    settings = SamplingSettings(seed=5)
    draws = [sample_token(probs, settings, position) for position in range(4000)]
    assert draws == [sample_token(probs, settings, position) for position in range(4000)]
    counts = Counter(draws)
    assert set(counts) == {0, 2, 3}, "tokens with probability 0 are never drawn"
    for token_id, expected in [(0, 0.5), (2, 0.3), (3, 0.2)]:
        assert counts[token_id] / 4000 == pytest.approx(expected, abs=0.03)
    # The other settings do not enter the random number: only the seed does.
    hotter = SamplingSettings(temperature=2.0, top_p=0.5, seed=5)
    assert [sample_token(probs, hotter, p) for p in range(50)] == draws[:50]
    other_seed = [sample_token(probs, SamplingSettings(seed=6), p) for p in range(50)]
    assert other_seed != draws[:50]


def test_sampling_a_distribution_with_one_token_left():
    probs = torch.zeros(10)
    probs[7] = 1.0
    assert {sample_token(probs, SamplingSettings(seed=s), 3) for s in range(20)} == {7}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"temperature": 0}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
        ({"temperature": 10.5}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"temperature": "1"}, "temperature"),
        ({"temperature": True}, "temperature"),
        ({"top_k": -1}, "top_k"),
        ({"top_k": 2.0}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_p": None}, "top_p"),
        ({"seed": -1}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"seed": False}, "seed"),
    ],
)
def test_bad_settings_are_refused_with_the_field_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplingSettings(**kwargs)


def test_settings_are_frozen_and_compare_by_value():
    settings = SamplingSettings(temperature=0.8, top_k=50, top_p=0.9, seed=1)
    assert settings == SamplingSettings(temperature=0.8, top_k=50, top_p=0.9, seed=1)
    with pytest.raises(AttributeError):
        settings.seed = 2  # type: ignore[misc]


def test_generate_steps_refuses_a_wrong_sampling_argument(tiny_lm):
    with pytest.raises(TypeError, match="SamplingSettings"):
        tokstep.generate_steps(tiny_lm, PROMPT, sampling={"temperature": 0.5})
