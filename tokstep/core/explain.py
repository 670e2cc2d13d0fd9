"""What each sampling setting does to the next token here: the numbers behind the page's help.

Pure functions of one `NextTokenSummary` (the distribution the stepper already has) and the
`SamplingSettings`. None runs a pass; each applies the core's own filters (tokstep.core.sampling,
which keep exactly the tokens transformers' warpers keep) once, to the logits already computed:

  temperature_effect   the most likely token's probability at a temperature, and at 1
  top_k_effect         how many tokens top-k leaves to draw from, and the model's probability of them
  top_p_effect         how many tokens are left under all the settings (top-p after temperature, top-k)
  nucleus_preview      top-p switched off: how many of the listed most likely tokens a p would keep
  seeded_draw          the token the next Step draws with these settings (it draws the same one)

`explain_settings` gathers them for the page, with an example value for a setting that is off
(temperature 1, top-k 0, top-p 1), so there is always something to see.

A runtime that returns only the most likely tokens (a serving engine: `summary.logits` is None)
gets what can be said from them: the engine's sampler numbers, flagged `estimated` where they
reach past those tokens, a lower bound for a top-k past them, and no draw (the engine draws).

Cost, per view: a softmax for the temperature, a top-k of the logits, and the sampler under the
settings, which the summary keeps (`NextTokenSummary.sampler`): the page's view and the next Step
ask for the same one. Only that sampler sorts the vocabulary (top-p below 1), so a top-p that is
off is previewed from the summary's sorted top tokens instead: a sort of GPT-2's 50,257 logits
costs 4-20 ms on two CPU cores, as much as a step.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from tokstep.core.distribution import NextTokenSummary, Sampler, TensorSampler
from tokstep.core.sampling import SamplingSettings, filter_top_k

# The example shown for a setting that is off: a temperature below 1, a top-k, a top-p.
EXAMPLE_TEMPERATURE = 0.5
EXAMPLE_TOP_K = 10
EXAMPLE_TOP_P = 0.9


@dataclass(frozen=True)
class TemperatureEffect:
    """The most likely token's probability at `temperature` (dividing the logits changes every
    probability but never which token is the most likely)."""

    token_id: int
    temperature: float
    prob: float  # in the model's own distribution (temperature 1)
    prob_at_temperature: float  # after dividing the logits by `temperature`, nothing filtered
    estimated: bool  # worked out from the top tokens only (a serving engine)


@dataclass(frozen=True)
class TopKEffect:
    """What top-k `k` leaves to draw from."""

    k: int
    kept: int  # tokens that can be drawn: the k most likely, and any tied with the k-th
    vocab_size: int
    mass: float  # the model's probability of those tokens together (before top-k shares it out)
    at_least: bool  # only the runtime's top tokens are known (fewer than k): `mass` is their part


@dataclass(frozen=True)
class TopPEffect:
    """What is left to draw from under every setting: top-p `p` applied, as the sampler applies it,
    to the distribution after the temperature and top-k."""

    p: float
    kept: int  # tokens the sampler can draw
    estimated: bool  # worked out from the top tokens only (a serving engine)


@dataclass(frozen=True)
class NucleusPreview:
    """Top-p `p` on the model's own distribution, read from the summary's most likely tokens."""

    p: float
    kept: int | None  # the smallest number of most likely tokens holding p; None: more than `known`
    mass: float  # the probability of those `kept` tokens (kept None: of the `known` ones)
    known: int  # how many of the most likely tokens the summary lists


@dataclass(frozen=True)
class SettingsEffects:
    """Every setting's effect on one next-token distribution, for the page's help."""

    temperature: TemperatureEffect  # at the setting, or at EXAMPLE_TEMPERATURE when it is 1
    top_k: TopKEffect  # of the setting, or of EXAMPLE_TOP_K when it is 0 (`top_k.k` says which)
    top_p: TopPEffect | NucleusPreview  # the setting applied, or a preview of EXAMPLE_TOP_P when it is 1
    draw: int | None  # the token the next Step draws with these settings; None: not drawn here


def exact(summary: NextTokenSummary) -> bool:
    """Whether the summary has the whole distribution (the model runs in this process)."""
    return summary.logits is not None


def _one_setting(summary: NextTokenSummary, settings: SamplingSettings) -> Sampler:
    """A sampler under `settings`, built for one question (not the one the summary keeps for the
    page's settings, which it would replace)."""
    return TensorSampler(summary.logits, settings) if exact(summary) else summary.sampler(settings)


def temperature_effect(summary: NextTokenSummary, temperature: float) -> TemperatureEffect:
    """The most likely token's probability at `temperature`, and in the model's own distribution."""
    token_id = summary.top_ids[0]
    sampler = _one_setting(summary, SamplingSettings(temperature=temperature))
    return TemperatureEffect(token_id, temperature, summary.top_probs[0], sampler.prob(token_id), sampler.estimated)


def top_k_effect(summary: NextTokenSummary, k: int, vocab_size: int) -> TopKEffect:
    """How many of `vocab_size` tokens top-k `k` leaves (0: all), and the model's probability of them."""
    if k <= 0 or k >= vocab_size:
        return TopKEffect(k, vocab_size, vocab_size, 1.0, False)
    if exact(summary):
        keep = filter_top_k(summary.logits, k) > -math.inf  # (vocab,): the core's filter, ties kept
        return TopKEffect(k, int(keep.sum()), vocab_size, float(summary.probs[keep].sum()), False)
    known = len(summary.top_ids)
    if k > known:
        # Asking the engine for k tokens would be one more request per view: say what the known hold.
        return TopKEffect(k, k, vocab_size, math.fsum(summary.top_probs), True)
    kept = _one_setting(summary, SamplingSettings(top_k=k)).kept  # exact within the known tokens
    return TopKEffect(k, kept, vocab_size, math.fsum(summary.top_probs[:kept]), False)


def top_p_effect(summary: NextTokenSummary, settings: SamplingSettings) -> TopPEffect:
    """How many tokens the sampler under `settings` can draw (its top-p after temperature and top-k).
    The sampler is the summary's kept one: the page's view and the next Step use it too."""
    sampler = summary.sampler(settings)
    return TopPEffect(settings.top_p, sampler.kept, sampler.estimated)


def nucleus_preview(summary: NextTokenSummary, p: float) -> NucleusPreview:
    """The smallest number of the most likely tokens whose probability reaches `p` (top-p's rule:
    a token stays while the mass before it is below p), read from the summary's sorted top tokens;
    None when the listed ones hold less than p."""
    cumulative = list(itertools.accumulate(summary.top_probs))
    for count, mass in enumerate(cumulative, start=1):
        if mass >= p:
            return NucleusPreview(p, count, mass, len(cumulative))
    return NucleusPreview(p, None, cumulative[-1], len(cumulative))


def seeded_draw(summary: NextTokenSummary, settings: SamplingSettings, position: int) -> int | None:
    """The token a Step at sequence `position` draws under `settings` (the draw is fixed by the seed
    and the position, so the Step draws the same one). None on a runtime whose sampler draws
    elsewhere: a serving engine would take a request for it."""
    if not exact(summary):
        return None
    return summary.sampler(settings).draw(position)


def explain_settings(
    summary: NextTokenSummary, settings: SamplingSettings, vocab_size: int, position: int, draw: bool = True
) -> SettingsEffects:
    """Each setting's effect on `summary`, an example one for a setting that is off; the token the
    next Step at `position` draws when `draw` (seeded sampling is on)."""
    temperature = settings.temperature if settings.temperature != 1.0 else EXAMPLE_TEMPERATURE
    k = settings.top_k if settings.top_k > 0 else EXAMPLE_TOP_K
    top_p = top_p_effect(summary, settings) if settings.top_p < 1.0 else nucleus_preview(summary, EXAMPLE_TOP_P)
    return SettingsEffects(
        temperature=temperature_effect(summary, temperature),
        top_k=top_k_effect(summary, k, vocab_size),
        top_p=top_p,
        draw=seeded_draw(summary, settings, position) if draw else None,
    )
