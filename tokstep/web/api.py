"""The `/generate` endpoint and the checks on what the page and API clients send.

Every check raises `gr.Error` with a message that names the argument and the allowed range,
which gradio_client shows as an `AppError` and the page shows as a pop-up.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gradio as gr

from tokstep.core.model import LanguageModel, ModelLoadError
from tokstep.core.sampling import SamplingSettings
from tokstep.core.stepper import PromptError, Step, TokenStepper, run_steps
from tokstep.web.model_choice import ModelCache, ModelNotAllowedError

MAX_PROMPT_CHARS = 100_000  # GPT-2's 1024 tokens are about 4,000 characters of English
MAX_API_TOKENS = 1024  # /generate's limit for a model with no fixed context length
API_TOP_K = 5


def whole_number(value: Any, name: str, low: int, high: int) -> int:
    """`value` as an int in low..high, or a gr.Error that names the argument and the range."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise gr.Error(f"{name} must be a whole number from {low} to {high}, got {value!r}.")
    return value


def number(value: Any, name: str, low: float, high: float) -> float:
    """`value` as a float in low..high, or a gr.Error that names the argument and the range."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise gr.Error(f"{name} must be a number from {low:g} to {high:g}, got {value!r}.")
    return float(value)


def sampling_settings(sample: Any, temperature: Any, top_k: Any, top_p: Any, seed: Any) -> SamplingSettings | None:
    """SamplingSettings when `sample` is true, None (greedy) otherwise; gr.Error for bad values."""
    if not isinstance(sample, bool):
        raise gr.Error(f"sample must be true or false, got {sample!r}.")
    if not sample:
        return None
    if isinstance(top_k, float) and top_k.is_integer():
        top_k = int(top_k)
    if isinstance(seed, float) and seed.is_integer():
        seed = int(seed)
    try:
        return SamplingSettings(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    except ValueError as error:
        raise gr.Error(str(error)) from None


def model_or_error(models: ModelCache, name: Any) -> LanguageModel:
    """The allowlisted model `name` (loading it on first use); "" means the page's default.

    gr.Error when the name is not text, not on the allowlist (it is never loaded then), or
    fails to load; the message names the allowed models or says why loading failed.
    """
    if not isinstance(name, str):
        raise gr.Error(f"model must be the name of a model, got {type(name).__name__}.")
    try:
        return models.get(name.strip() or models.default)
    except ModelNotAllowedError as error:
        raise gr.Error(str(error), title="Model not offered") from None
    except ModelLoadError as error:
        raise gr.Error(str(error), title="Cannot load the model") from None


def new_stepper(lm: LanguageModel, prompt: Any) -> TokenStepper:
    """A stepper for text typed on the page or sent to the API; PromptError says what is wrong."""
    if not isinstance(prompt, str):
        raise PromptError(f"The prompt must be text, got {type(prompt).__name__}.")
    if len(prompt) > MAX_PROMPT_CHARS:
        # Refused before tokenizing: a huge paste must not keep the server busy.
        raise PromptError(
            f"The prompt is {len(prompt):,} characters long; tokstep takes at most {MAX_PROMPT_CHARS:,} "
            f"characters, and {lm.name} reads at most {lm.context_length or 'a limited number of'} tokens. "
            "Use a shorter prompt."
        )
    return TokenStepper.from_text(lm, prompt)


def step_update(stepper: TokenStepper, step: Step) -> dict:
    """One streamed /generate update: plain JSON types only."""
    return {
        "text": stepper.text(),
        "token_id": step.token_id,
        "token": step.token,
        "prob": step.prob,
        "top": [list(candidate) for candidate in step.top],
        "rest_prob": step.rest_prob,
        "position": step.position,
        "chosen_by": step.chosen_by,
        "rank": step.rank,
        "entropy": step.entropy,
        "sampling_prob": step.sampling_prob,
        "stop_reason": step.stop_reason,
    }


def generate_updates(
    lm: LanguageModel,
    prompt: Any,
    max_new_tokens: Any = 20,
    sample: Any = False,
    temperature: Any = 1.0,
    top_k: Any = 0,
    top_p: Any = 1.0,
    seed: Any = 0,
) -> Iterator[dict]:
    """The /generate endpoint: one JSON object per token, at full speed (no pacing)."""
    max_new_tokens = whole_number(max_new_tokens, "max_new_tokens", 1, lm.context_length or MAX_API_TOKENS)
    sampling = sampling_settings(sample, temperature, top_k, top_p, seed)
    try:
        stepper = new_stepper(lm, prompt)
    except PromptError as error:
        raise gr.Error(str(error)) from None
    # The engine's own run: the next token's pass joins the next batch while Gradio sends this one.
    for step in run_steps(stepper, max_new_tokens, API_TOP_K, sampling):
        yield step_update(stepper, step)
