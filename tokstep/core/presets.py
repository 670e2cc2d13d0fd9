"""Presets by link: `?prompt=...&steps=N&mode=sample&seed=7` opens the page already stepped.

Gradio-free. `parse_preset` reads a link's query parameters, keeping every problem as a
sentence for the page instead of raising; `apply_preset` builds the stepper the link
describes; `preset_query` writes the query for a stepper's current state, and
`link_reproduces` says whether opening it gives back the very same tokens.

Query parameters (all optional; others, such as Gradio's own `__theme`, are ignored):
  prompt       the prompt text
  steps        how many tokens to generate on opening, 0..MAX_LINK_STEPS (default 0)
  mode         "greedy" (default) or "sample"
  temperature, top_k, top_p, seed   the sampling settings (only with mode=sample)
  model        one of the models the page offers (TOKSTEP_MODELS); default: the app's own.
               Which names are offered is the page's business (tokstep.web.model_choice), not this module's.

A link is exact because greedy steps are deterministic and a seeded draw depends only on
(seed, position, settings); tokens a user picked by hand are not in a link (export the run
for those, see tokstep.core.run_files).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlencode

from tokstep.core.model import LanguageModel
from tokstep.core.sampling import SamplingSettings
from tokstep.core.stepper import PromptError, TokenStepper

# Each step on opening costs one forward pass, paid before the page shows: keep it short.
MAX_LINK_STEPS = 256
# Browsers and proxies refuse URLs beyond a few thousand characters anyway.
MAX_LINK_PROMPT_CHARS = 2000
MAX_LINK_MODEL_CHARS = 300  # a Hub id or a folder path; longer is no name the page offers
PRESET_KEYS = frozenset({"prompt", "steps", "mode", "temperature", "top_k", "top_p", "seed", "model"})


@dataclass(frozen=True)
class Preset:
    """What a link asks for, after checking. Anything bad was dropped and named in `problems`."""

    prompt: str | None = None  # None: the page's own prompt
    steps: int = 0
    sampling: SamplingSettings | None = None  # None: greedy
    model: str | None = None  # None: the page's default model; not yet checked against its allowlist
    problems: tuple[str, ...] = ()


def has_preset(params: Mapping[str, str]) -> bool:
    """Whether a page was opened with any preset parameter in its URL."""
    return any(key in PRESET_KEYS for key in params)


def _whole(text: str, name: str, low: int, high: int) -> int:
    """`text` as an int in low..high, or a ValueError with a sentence for the page."""
    try:
        value = int(text.strip())
    except ValueError:
        raise ValueError(f"`{name}` must be a whole number from {low} to {high}, got {text[:40]!r}") from None
    if not low <= value <= high:
        raise ValueError(f"`{name}` must be a whole number from {low} to {high}, got {value}")
    return value


def _float(text: str, name: str) -> float:
    try:
        return float(text.strip())
    except ValueError:
        raise ValueError(f"`{name}` must be a number, got {text[:40]!r}") from None


def _read_sampling(params: Mapping[str, str]) -> SamplingSettings:
    """The sampling settings of a link with mode=sample; ValueError names a bad one."""
    return SamplingSettings(
        temperature=_float(params.get("temperature", "1"), "temperature"),
        top_k=_whole(params.get("top_k", "0"), "top_k", 0, 1_000_000),
        top_p=_float(params.get("top_p", "1"), "top_p"),
        seed=_whole(params.get("seed", "0"), "seed", 0, 2**63 - 1),
    )


def parse_preset(params: Mapping[str, str]) -> Preset:
    """The preset a link's query parameters describe. Never raises: a bad value falls back to
    the default (page prompt, 0 steps, greedy) and a sentence in `problems` says why."""
    problems: list[str] = []
    prompt = params.get("prompt")
    if prompt is not None and len(prompt) > MAX_LINK_PROMPT_CHARS:
        problems.append(
            f"the prompt in the link is {len(prompt):,} characters; a link takes at most "
            f"{MAX_LINK_PROMPT_CHARS:,}, so the default prompt is used"
        )
        prompt = None
    elif prompt is not None and not prompt.strip():
        problems.append("the prompt in the link is empty, so the default prompt is used")
        prompt = None
    steps = 0
    if "steps" in params:
        try:
            steps = _whole(params["steps"], "steps", 0, MAX_LINK_STEPS)
        except ValueError as error:
            problems.append(f"{error}, so no tokens were generated")
    sampling = None
    mode = params.get("mode", "greedy").strip().lower()
    if mode == "sample":
        try:
            sampling = _read_sampling(params)
        except ValueError as error:
            problems.append(f"{str(error).rstrip('.')}; stepping greedily instead")
    elif mode != "greedy":
        problems.append(f"`mode` must be `greedy` or `sample`, got {mode[:40]!r}; stepping greedily")
    model = params.get("model")
    if model is not None:
        model = model.strip()
        if not model or len(model) > MAX_LINK_MODEL_CHARS:
            problems.append("the model in the link is empty or too long, so the default model is used")
            model = None
    return Preset(prompt=prompt, steps=steps, sampling=sampling, model=model, problems=tuple(problems))


def apply_preset(
    lm: LanguageModel, preset: Preset, default_prompt: str, top_k_size: int = 5
) -> tuple[TokenStepper | None, list[str]]:
    """The stepper a preset describes, and the problems met (the preset's own first).

    The prompt falls back to `default_prompt` when the model cannot take the link's prompt;
    stepping goes on past an end-of-text token (the link's run may have) and stops early only
    when the context is full.
    Returns (None, problems) only when the default prompt cannot be used either.
    """
    problems = list(preset.problems)
    try:
        stepper = TokenStepper.from_text(lm, preset.prompt if preset.prompt is not None else default_prompt)
    except PromptError as error:
        if preset.prompt is None:
            return None, [*problems, str(error)]
        problems.append(f"the link's prompt cannot be used ({error}), so the default prompt is used")
        try:
            stepper = TokenStepper.from_text(lm, default_prompt)
        except PromptError as default_error:
            return None, [*problems, str(default_error)]
    for _ in range(preset.steps):
        if stepper.room_left is not None and stepper.room_left <= 0:
            break
        stepper.step(top_k_size, sampling=preset.sampling)
    if len(stepper.steps) < preset.steps:
        problems.append(f"the link asked for {preset.steps} tokens; its context is full after {len(stepper.steps)}")
    return stepper, problems


def preset_query(stepper: TokenStepper, sampling: SamplingSettings | None, model: str | None = None) -> str:
    """The query string ("?prompt=...&steps=N...") of a link to `stepper`'s prompt and length.

    `model` is added last as `model=`; the page passes it only when the session runs another
    model than the app's default, so links to the default model stay short.
    """
    params: dict[str, str | int | float] = {"prompt": stepper.prompt_text, "steps": len(stepper.steps)}
    if sampling is not None:
        params.update(
            mode="sample", temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p,
            seed=sampling.seed,
        )  # fmt: skip
    if model is not None:
        params["model"] = model
    return "?" + urlencode(params)


def link_reproduces(stepper: TokenStepper, sampling: SamplingSettings | None) -> bool:
    """Whether opening `preset_query(stepper, sampling)` gives back exactly stepper's tokens:
    every step was taken with these settings, none picked by hand, and no more than a link takes."""
    how = "sampled" if sampling is not None else "greedy"
    same = all(step.chosen_by == how and step.sampling == sampling for step in stepper.steps)
    return same and len(stepper.steps) <= MAX_LINK_STEPS
