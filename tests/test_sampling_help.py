"""The help beside the sampling settings (tokstep.web.sampling_help on tokstep.core.explain).

Every number a box shows is worked out here again from the model's logits, with torch and
transformers' own logits warpers, and compared with the number in the sentence. The boxes are
checked on the page's view (tokstep.web.views.render), through a stand-in serving engine, and on a
launched server, where they change with the temperature slider."""

from __future__ import annotations

import re
from dataclasses import asdict

import pytest
import torch
from conftest import SETTINGS
from gradio_client import Client
from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

import tokstep
from tokstep.core.explain import EXAMPLE_TEMPERATURE, EXAMPLE_TOP_K, EXAMPLE_TOP_P
from tokstep.core.sampling import SamplingSettings
from tokstep.core.stepper import TokenStepper
from tokstep.web.constants import SAMPLE
from tokstep.web.sampling_help import ESTIMATED, SEED_GREEDY, TEMPERATURE_LEAD, TOP_K_LEAD, TOP_P_LEAD, token_code
from tokstep.web.settings import PageSettings, page_arguments
from tokstep.web.views import VIEW_OUTPUTS, PageView, render

PROMPT = "Once upon a time"
PERCENT = r"([<>]?\d+(?:\.\d)?%)"


def within(shown: str, value: float) -> bool:
    """Whether `value` (0..1) is what the page's "41.3%", "<0.1%" or ">99.9%" says."""
    if shown == "<0.1%":
        return 0 < value < 0.0005
    if shown == ">99.9%":
        return 0.9995 <= value < 1
    return abs(float(shown.rstrip("%")) / 100 - value) <= 0.0005 + 1e-6


def found(pattern: str, text: str) -> tuple[str, ...]:
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not in {text!r}"
    return match.groups()


def view_with(stepper: TokenStepper, sampling: bool = False, **controls) -> PageView:
    """The page's view with the sampling controls set to `controls`, in sample or greedy mode."""
    settings = SamplingSettings(**controls)
    return render(stepper, PageSettings(sampling=settings if sampling else None, sampling_controls=settings))


def warped(logits: torch.Tensor, settings: SamplingSettings) -> torch.Tensor:
    """The logits after transformers' warpers, in the order `generate(do_sample=True)` applies them."""
    scores = logits.float()[None]  # (1, vocab)
    warpers = [TemperatureLogitsWarper(float(settings.temperature))]
    if settings.top_k > 0:
        warpers.append(TopKLogitsWarper(settings.top_k))
    if settings.top_p < 1:
        warpers.append(TopPLogitsWarper(settings.top_p))
    for warper in warpers:
        scores = warper(None, scores)
    return scores[0]


@pytest.fixture
def stepper(tiny_lm) -> TokenStepper:
    stepper = TokenStepper.from_text(tiny_lm, PROMPT)
    stepper.step()  # a step in: the help follows the sequence, not only the prompt
    return stepper


@pytest.mark.parametrize("temperature", [0.5, 1.5, 1.0])
def test_the_temperature_box_gives_the_top_token_s_probability_there_and_at_1(stepper, temperature):
    logits = stepper.next_token_logits().double()
    top = int(torch.argmax(logits))
    shown_at = temperature if temperature != 1.0 else EXAMPLE_TEMPERATURE
    own, tempered = torch.softmax(logits, -1)[top].item(), torch.softmax(logits / shown_at, -1)[top].item()
    text = view_with(stepper, temperature=temperature).temperature_help
    assert text.startswith(TEMPERATURE_LEAD) and token_code(stepper.lm.texts.text(top)) in text
    if temperature == 1.0:
        shown_own, shown_tempered = found(rf"has {PERCENT}\); at {shown_at:g}, .* would get {PERCENT}\.", text)
    else:
        shown_tempered, shown_own = found(
            rf"temperature {temperature:g}, .* would get {PERCENT} instead of {PERCENT}", text
        )
    assert within(shown_own, own) and within(shown_tempered, tempered), (text, own, tempered)
    assert "≈" not in text  # the whole distribution is here: nothing is estimated


@pytest.mark.parametrize("k", [40, 3, 0])
def test_the_top_k_box_counts_the_tokens_left_and_the_probability_they_hold(stepper, k):
    logits = stepper.next_token_logits()
    kept = torch.isfinite(warped(logits, SamplingSettings(top_k=k or EXAMPLE_TOP_K)))  # (vocab,)
    mass = torch.softmax(logits.double(), -1)[kept].sum().item()
    text = view_with(stepper, top_k=k).top_k_help
    assert text.startswith(TOP_K_LEAD)
    vocab = f"{stepper.lm.vocab_size:,}"
    if k:
        count, shown_vocab, shown_mass = found(
            rf"only ([\d,]+) of ([\d,]+) tokens can be drawn; they hold {PERCENT}", text
        )
        assert shown_vocab == vocab
    else:
        assert f"all {vocab} tokens can be drawn" in text
        count, shown_mass = found(rf"with top-k {EXAMPLE_TOP_K}, only ([\d,]+) could; they hold {PERCENT}", text)
    assert int(count.replace(",", "")) == int(kept.sum()) and within(shown_mass, mass), (text, mass)


@pytest.mark.parametrize(
    "controls",
    [
        {"top_p": 0.9},
        {"top_p": 0.95, "temperature": 1.5},
        {"top_p": 0.99, "temperature": 2.0, "top_k": 40},
        {"top_p": 0.5, "temperature": 0.5},
    ],
)
def test_the_top_p_box_counts_the_tokens_every_setting_leaves(stepper, controls):
    settings = SamplingSettings(**controls)
    kept = int(torch.isfinite(warped(stepper.next_token_logits(), settings)).sum())
    for sampling in (False, True):  # the same count in greedy mode (what sampling would do) and in sample mode
        text = view_with(stepper, sampling, **controls).top_p_help
        assert text.startswith(TOP_P_LEAD)
        (count,) = found(rf"with top-p {settings.top_p:g}, ([\d,]+) tokens? can be drawn", text)
        assert int(count.replace(",", "")) == kept, text
        assert (f"at temperature {settings.temperature:g}" in text) == (settings.temperature != 1.0)
        assert (f"after top-k {settings.top_k}" in text) == (settings.top_k > 0)


def test_with_top_p_off_its_box_previews_a_nucleus_from_the_top_tokens(stepper):
    logits = stepper.next_token_logits()
    probs = torch.sort(torch.softmax(logits.double(), -1), descending=True).values
    cumulative = torch.cumsum(probs, 0)
    needed = int((cumulative < EXAMPLE_TOP_P).sum()) + 1  # the smallest number of top tokens holding p
    text = view_with(stepper).top_p_help
    if needed > len(stepper.next_summary().top_ids):
        count, shown = found(rf"more than (\d+) would be: the \d+ most likely hold only {PERCENT}", text)
        assert within(shown, cumulative[int(count) - 1].item())
        return
    # Exactly what top-p would keep: the same count as transformers' warper, from the listed tokens alone.
    assert needed == int(torch.isfinite(warped(logits, SamplingSettings(top_p=EXAMPLE_TOP_P))).sum())
    if needed == 1:
        (shown,) = found(rf"the most likely token alone could be drawn \(together {PERCENT}\)", text)
    else:
        count, shown = found(rf"only the (\d+) most likely could be drawn \(together {PERCENT}\)", text)
        assert int(count) == needed
    assert within(shown, cumulative[needed - 1].item()), text


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_the_seed_box_names_the_token_the_next_step_draws(stepper, seed):
    settings = SamplingSettings(temperature=1.5, top_k=40, top_p=0.95, seed=seed)
    text = view_with(stepper, True, **asdict(settings)).seed_help
    (token_id,) = found(r"Step draws <code>.*</code> \(id (\d+)\) with seed " + str(seed), text)
    step = stepper.step(sampling=settings)
    assert step.token_id == int(token_id) and token_code(step.token) in text
    stepper.undo()  # and again after an Undo, as the box says
    assert stepper.step(sampling=settings).token_id == int(token_id)


def test_in_greedy_mode_the_seed_box_says_the_seed_is_not_used(stepper):
    assert view_with(stepper, temperature=0.7, seed=5).seed_help == SEED_GREEDY


def test_the_boxes_follow_the_sequence_step_by_step(stepper):
    texts = set()
    for _ in range(4):
        texts.add(view_with(stepper, temperature=0.5).temperature_help)
        stepper.step()
    assert len(texts) > 1  # another distribution, other numbers


def test_without_a_sequence_the_boxes_keep_their_sentences():
    view = render(None, PageSettings())
    assert (view.temperature_help, view.top_k_help, view.top_p_help) == (TEMPERATURE_LEAD, TOP_K_LEAD, TOP_P_LEAD)
    assert view.seed_help == SEED_GREEDY


def test_the_sampler_under_the_page_s_settings_is_computed_once_per_distribution(stepper):
    """The view, its help and the Step after them share one sampler (a softmax, and with top-p a sort)."""
    settings = SamplingSettings(temperature=0.7, top_p=0.9, seed=3)
    first = stepper.next_sampler(settings)
    view_with(stepper, True, **asdict(settings))
    assert stepper.next_sampler(settings) is first
    other = stepper.next_sampler(SamplingSettings(seed=4))
    assert other is not first and stepper.next_sampler(SamplingSettings(seed=4)) is other
    step = stepper.step(sampling=settings)  # a new distribution: its own sampler
    assert stepper.next_sampler(settings) is not first and step.sampling_prob == first.prob(step.token_id)


# --- through a serving engine: only its top tokens ---------------------------------------------------


@pytest.fixture
def engine_stepper():
    from engine_support import EngineDouble

    from tokstep.core.loading import load_without_weights
    from tokstep.runtimes.engine import EngineRuntime

    if "tinystories" not in tokstep.bundled_models():
        pytest.skip("needs the bundled model")
    local = load_without_weights("tinystories")
    double = EngineDouble(tokenizer=local.tokenizer, vocab_size=local.vocab_size)
    try:
        stepper = TokenStepper.from_text(EngineRuntime(double.url, timeout_s=5).load("tinystories"), PROMPT)
        stepper.step()
        yield stepper, double
    finally:
        double.close()


def test_through_a_serving_engine_the_boxes_say_what_the_top_tokens_tell_and_ask_nothing_more(engine_stepper):
    stepper, double = engine_stepper
    render(stepper, PageSettings())  # the page's view after the step: the next distribution is read
    asked = double.requests
    summary = stepper.next_summary()
    known = len(summary.top_ids)
    view = view_with(stepper, temperature=0.5, top_k=known + 20)
    # The temperature's effect reaches past the top tokens: an estimate, said so.
    estimate = stepper.next_sampler(SamplingSettings(temperature=0.5)).prob(summary.top_ids[0])
    (shown,) = found(rf"would get ≈ {PERCENT} instead of", view.temperature_help)
    assert within(shown, estimate) and ESTIMATED in view.temperature_help
    # A top-k past the tokens the engine sent: what they hold is a lower bound.
    (shown,) = found(rf"they hold at least {PERCENT}", view.top_k_help)
    assert within(shown, sum(summary.top_probs))
    # A top-k within them is exact.
    (shown,) = found(
        rf"only 3 of [\d,]+ tokens can be drawn; they hold {PERCENT}", view_with(stepper, top_k=3).top_k_help
    )
    assert within(shown, sum(summary.top_probs[:3]))
    assert double.requests == asked  # none of it cost a request
    # In sample mode the engine draws: the box does not ask it for the token. Its top-p count is the
    # engine sampler's, as the view has it (an estimate where it reaches past the top tokens).
    settings = SamplingSettings(temperature=1.5, top_p=0.9, seed=1)
    view = view_with(stepper, True, **asdict(settings))
    assert "(id " not in view.seed_help and "serving engine's sampler" in view.seed_help
    sampler = stepper.next_sampler(settings)
    (count,) = found(r"with top-p 0.9, (?:≈ )?([\d,]+) tokens? can be drawn", view.top_p_help)
    assert int(count.replace(",", "")) == sampler.kept and ("≈" in view.top_p_help) == sampler.estimated
    assert double.requests == asked


# --- on a launched server ------------------------------------------------------------------------------

# The boxes' places among an event's outputs (an API client gets no gr.State, the view's first).
HELP = {name: VIEW_OUTPUTS.index(f"{name}_help") - 1 for name in ("temperature", "top_k", "top_p", "seed")}


def test_on_the_page_the_help_appears_and_changes_with_the_temperature_slider(server_url, tiny_lm):
    client = Client(server_url, verbose=False)
    first = client.predict(PROMPT, *SETTINGS, api_name="/reset")
    assert first[HELP["seed"]] == SEED_GREEDY
    logits = TokenStepper.from_text(tiny_lm, PROMPT).next_token_logits().double()
    top = int(torch.argmax(logits))
    shown = {}
    for temperature in (0.5, 1.5):
        view = client.predict(PROMPT, *page_arguments(mode=SAMPLE, temperature=temperature), api_name="/view")
        text = shown[temperature] = view[HELP["temperature"]]
        (at,) = found(rf"with temperature {temperature:g}, .* would get {PERCENT} instead of", text)
        assert within(at, torch.softmax(logits / temperature, -1)[top].item()), text
        assert "(id " in view[HELP["seed"]]  # sample mode: the token the next Step draws
    assert shown[0.5] != shown[1.5]
