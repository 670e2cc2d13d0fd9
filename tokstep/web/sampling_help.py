"""Plain-language help beside the sampling settings, with a live example from the current step.

Under each of temperature, top-k, top-p and seed (the "Choosing" accordion, laid out by
tokstep.web.page_layout.settings_accordion) a box says in a sentence or two what the setting does,
then what it does here, with the numbers of the distribution the page shows:

    With temperature 0.5, ␣of would get 41.3% instead of 19.0%.

The numbers come from tokstep.core.explain, on the distribution the stepper already has (no pass,
no second sampler: see its docstring for the cost). `help_texts` is called by
tokstep.web.views.render, so the boxes change whenever the view does: after each step and with
every change of a setting. Without a distribution (no sequence, a full context, a failed engine
request) the boxes keep their first sentences. Through a serving engine, numbers worked out from
its top tokens are marked "≈".
"""

from __future__ import annotations

import html
from dataclasses import dataclass, fields
from typing import NamedTuple

import gradio as gr

from tokstep.core.explain import NucleusPreview, SettingsEffects, explain_settings
from tokstep.core.sampling import SamplingSettings
from tokstep.core.stepper import RunStopped, TokenStepper
from tokstep.core.tokens import visible_whitespace
from tokstep.runtimes.engine import EngineError

ESTIMATED = "≈ estimated from the serving engine's top tokens"

# What each setting does, in a sentence or two (shown alone when there is no distribution to show).
TEMPERATURE_LEAD = (
    "Divides the model's scores (logits) before the softmax: below 1 the likely tokens get likelier, "
    "above 1 the unlikely ones catch up."
)
TOP_K_LEAD = "Draws only from the k most likely tokens, their probability shared out among them (0: from all)."
TOP_P_LEAD = (
    "Draws only from the smallest set of most likely tokens whose probability adds up to p, "
    "the “nucleus” (1: from all)."
)
SEED_LEAD = "Fixes the random numbers of the draws: the same seed and settings draw the same tokens every time."
SEED_GREEDY = (
    "Not used in greedy mode, which takes the most likely token. In Sample mode, the same seed and settings "
    "draw the same tokens every time."
)


class SamplingHelp(NamedTuple):
    """The four help boxes' Markdown, in the order the settings are laid out."""

    temperature: str
    top_k: str
    top_p: str
    seed: str


@dataclass(frozen=True)
class SamplingHelpBoxes:
    """The help boxes, created unrendered; settings_accordion renders each under its control."""

    temperature: gr.Markdown
    top_k: gr.Markdown
    top_p: gr.Markdown
    seed: gr.Markdown

    @classmethod
    def create(cls) -> SamplingHelpBoxes:
        # elem_ids after their controls': temperature-help, top-k-help, top-p-help, seed-help.
        static = static_help(sampling=False)._asdict()
        return cls(**{
            name: gr.Markdown(text, elem_id=f"{name.replace('_', '-')}-help", render=False)
            for name, text in static.items()
        })  # fmt: skip

    @property
    def components(self) -> list[gr.Markdown]:
        """The boxes in SamplingHelp's order: the view's last outputs (tokstep.web.views.PageView)."""
        return [getattr(self, box.name) for box in fields(self)]


def percent(p: float) -> str:
    """A probability with one decimal, never rounded to a bare 0% or 100% it is not: "<0.1%", ">99.9%"."""
    if 0 < p < 0.0005:
        return "<0.1%"
    if 0.9995 <= p < 1:
        return ">99.9%"
    return f"{p:.1%}"


def token_code(text: str) -> str:
    """A token's display text as inline code (HTML: any backtick or asterisk in it stays as it is)."""
    return f"<code>{html.escape(visible_whitespace(text))}</code>"


def static_help(sampling: bool) -> SamplingHelp:
    """The boxes without a distribution: what each setting does."""
    return SamplingHelp(TEMPERATURE_LEAD, TOP_K_LEAD, TOP_P_LEAD, _seed_lead(sampling))


def _seed_lead(sampling: bool) -> str:
    if sampling:
        return f"{SEED_LEAD} Also after an Undo: a draw depends only on the seed, the settings and the text so far."
    return SEED_GREEDY


def help_texts(stepper: TokenStepper | None, settings: SamplingSettings, sampling: bool) -> SamplingHelp:
    """The boxes for `stepper`'s next token under the sampling controls' `settings`, also in greedy mode
    (`sampling` False: nothing is drawn, the seed is not used). Call it once the view has read the
    stepper's next distribution: it is taken from the stepper, not computed again."""
    if stepper is None:
        return static_help(sampling)
    try:
        summary = stepper.next_summary()
    except (EngineError, RunStopped):  # only when a step came in since the view read it: it shows next
        return static_help(sampling)
    effects = explain_settings(summary, settings, stepper.lm.vocab_size, len(stepper.ids), draw=sampling)
    texts = stepper.lm.texts
    top_token = texts.text(effects.temperature.token_id)
    drawn = texts.text(effects.draw) if effects.draw is not None else None
    return SamplingHelp(
        temperature=f"{TEMPERATURE_LEAD} {_temperature_example(effects, settings, top_token)}",
        top_k=f"{TOP_K_LEAD} {_top_k_example(effects, settings)}",
        top_p=f"{TOP_P_LEAD} {_top_p_example(effects, settings)}",
        seed=_seed_example(effects, settings, sampling, drawn),
    )


def _approx(estimated: bool) -> str:
    return "≈ " if estimated else ""


def _note(estimated: bool) -> str:
    return f" ({ESTIMATED})" if estimated else ""


def _temperature_example(effects: SettingsEffects, settings: SamplingSettings, token: str) -> str:
    effect, code = effects.temperature, token_code(token)
    at = f"{_approx(effect.estimated)}{percent(effect.prob_at_temperature)}"
    if settings.temperature == 1.0:  # the setting changes nothing: show an example temperature
        return (
            f"**Here:** at 1 the model's own probabilities are used ({code} has {percent(effect.prob)}); "
            f"at {effect.temperature:g}, {code} would get {at}{_note(effect.estimated)}."
        )
    return (
        f"**Here:** with temperature {effect.temperature:g}, {code} would get {at} instead of "
        f"{percent(effect.prob)}{_note(effect.estimated)}."
    )


def _top_k_example(effects: SettingsEffects, settings: SamplingSettings) -> str:
    effect = effects.top_k
    vocab = f"{effect.vocab_size:,}"
    hold = f"they hold {percent(effect.mass)} of the probability"
    if effect.at_least:  # the engine sent fewer tokens than k: what those hold is a lower bound
        hold = f"they hold at least {percent(effect.mass)} of the probability (what the engine's top tokens hold)"
    if settings.top_k == 0:
        return f"**Here:** all {vocab} tokens can be drawn; with top-k {effect.k}, only {effect.kept:,} could; {hold}."
    if effect.kept >= effect.vocab_size:
        return f"**Here:** top-k {settings.top_k:,} keeps every one of the {vocab} tokens."
    return f"**Here:** with top-k {effect.k:,}, only {effect.kept:,} of {vocab} tokens can be drawn; {hold}."


def _top_p_example(effects: SettingsEffects, settings: SamplingSettings) -> str:
    effect = effects.top_p
    if isinstance(effect, NucleusPreview):  # top-p is off: what a p would keep, from the listed tokens
        if effect.kept is None:
            return (
                f"**Here:** all tokens can be drawn; with top-p {effect.p:g}, more than {effect.known} would be: "
                f"the {effect.known} most likely hold only {percent(effect.mass)}."
            )
        tokens = "the most likely token alone" if effect.kept == 1 else f"only the {effect.kept} most likely"
        return (
            f"**Here:** all tokens can be drawn; with top-p {effect.p:g}, {tokens} could be drawn "
            f"(together {percent(effect.mass)})."
        )
    # Top-p comes last: it reads the distribution after the temperature and top-k.
    before = [f" at temperature {settings.temperature:g}"] if settings.temperature != 1.0 else []
    if settings.top_k > 0:
        before.append(f" after top-k {settings.top_k:,}")
    context = ",".join(before)
    tokens = "1 token" if effect.kept == 1 else f"{effect.kept:,} tokens"
    return (
        f"**Here:** with top-p {effect.p:g}, {_approx(effect.estimated)}{tokens} can be drawn: the smallest "
        f"set of most likely tokens holding {effect.p * 100:g}% of the probability{context}{_note(effect.estimated)}."
    )


def _seed_example(effects: SettingsEffects, settings: SamplingSettings, sampling: bool, drawn: str | None) -> str:
    if not sampling:
        return _seed_lead(False)
    if drawn is None:  # a serving engine draws: asking it here would cost a request per view
        return f"{_seed_lead(True)} The serving engine's sampler is seeded from the seed and the token's position."
    return (
        f"{SEED_LEAD} **Here:** Step draws {token_code(drawn)} (id {effects.draw}) with seed {settings.seed}, "
        "and draws it here every time with these settings, also after an Undo."
    )
