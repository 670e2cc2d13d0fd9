"""The `/generate` endpoint, and what the page's events and it both need: a model by name, a stepper
from a typed prompt.

Every argument is checked with tokstep.web.checks, so a bad one is a gr.Error that names it and
its range, which gradio_client raises as an `AppError`. Tokens stream from the run loop the page's
Auto-run uses too (tokstep.core.run_loop), at full speed.

Each run is its caller's (by address: tokstep.web.clients), within its fair share
(tokstep.web.client_limits): `max_new_tokens` up to the operator's ceiling, a few streams at once,
a budget of tokens a minute. A run past them is refused before anything else is done.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from typing import Any

import gradio as gr

from tokstep.core.model import LanguageModel, ModelLoadError
from tokstep.core.run_loop import run_steps
from tokstep.core.sampling import MAX_TEMPERATURE, SamplingSettings
from tokstep.core.stepper import PromptError, Step, TokenStepper
from tokstep.core.why import WhyReader
from tokstep.core.why_records import why_fields
from tokstep.runtimes.engine import EngineError
from tokstep.web.checks import Flag, Number, Whole, user_error
from tokstep.web.client_limits import ClientLimits
from tokstep.web.constants import MAX_PROMPT_CHARS
from tokstep.web.model_choice import ModelCache, ModelNotAllowedError

__all__ = ["MAX_PROMPT_CHARS", "generate", "generate_on_the_one_model", "generate_updates", "model_or_error"]

MAX_API_TOKENS = 1024  # generate_updates' limit for a model with no fixed context length
API_TOP_K = 5

# /generate's arguments by their own names, with the sampler's limits (tokstep.core.sampling).
SAMPLE = Flag("sample")
TEMPERATURE = Number("temperature", 0, MAX_TEMPERATURE, above=True)
TOP_K = Whole("top_k", 0)
TOP_P = Number("top_p", 0, 1, above=True)
SEED = Whole("seed", 0)
LAYERS = Flag("layers")
ATTENTION = Flag("attention")
# A run that reads layer by layer or where it looked runs a second pass per token (tokstep.core.why), and the
# lens the output layer on every layer: 2-3.3 times a plain run's time per token (bench.why_views). Each of
# its tokens counts this many times against its caller's tokens a minute.
WHY_TOKEN_COST = 3

GENERATE_DOC = """Generation streamed one token at a time, greedy unless `sample` is true (then seeded: the
same seed and settings give the same tokens). Each update is {text, token_id, token, prob, top: [[token_id,
token, prob], ...], rest_prob, position, chosen_by, rank, entropy, sampling_prob, stop_reason, sampler,
estimates}; probabilities are always the model's own, and `estimates` names any number that is estimated
(on a serving engine: "entropy", and "sampling" when the sampler's numbers are). With `layers` true each update
also has `layers`: what each layer would have predicted for that token (the logit lens: [{layer, top}], the
embeddings first, the model's output last); with `attention` true, `attention`: where the last position looked
({tokens, average, layers: [{layer, weights, elsewhere}]}, averaged over heads). Both need the model in this
process and cost a second pass per token (each token counts three times against the budget). Each caller (by address)
has a fair share: a few streams at once, a budget of tokens a minute; a call past it is refused at once, saying
when to retry."""
MODEL_ARGUMENT_DOC = """ `model` is one of the models the page offers ("" = the default); another name is refused."""


def model_or_error(models: ModelCache, name: Any) -> LanguageModel:
    """The allowlisted model `name` (loading it on first use); "" means the page's default.

    gr.Error when the name is not text, not on the allowlist (it is never loaded then), or
    fails to load; the message names the allowed models or says why loading failed.
    """
    if not isinstance(name, str):
        raise user_error(f"model must be the name of a model, got {type(name).__name__}.", title="Bad setting")
    try:
        return models.get(name.strip() or models.default)
    except ModelNotAllowedError as error:
        raise user_error(str(error), title="Model not offered") from None
    except ModelLoadError as error:
        raise user_error(str(error), title="Cannot load the model") from None


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


class EngineAppError(EngineError, gr.Error):
    """An EngineError that Gradio shows as it is: a pop-up titled "Serving engine" on the page, an
    AppError with the message in gradio_client. The app's engine runtime raises these
    (`EngineRuntime(url, error_type=EngineAppError)`), so a failure anywhere in an event, a Step
    or an Auto-run, reaches the visitor as one readable sentence; the page keeps its tokens."""

    def __init__(self, message: str) -> None:
        gr.Error.__init__(self, message, title=EngineError.title, print_exception=False)

    def __str__(self) -> str:
        return self.message


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
        # Whose sampler drew the token ("tokstep" in process, "engine" on a serving engine), and
        # which numbers are estimates ("entropy", "sampling"; empty in process).
        "sampler": step.sampler,
        "estimates": sorted(step.estimates),
    }


def api_sampling(sample: Any, temperature: Any, top_k: Any, top_p: Any, seed: Any) -> SamplingSettings | None:
    """SamplingSettings when `sample` is true, None (greedy) otherwise; the sampling arguments are
    only read, and checked, when it is."""
    if not SAMPLE(sample):
        return None
    return SamplingSettings(
        temperature=TEMPERATURE(temperature), top_k=TOP_K(top_k), top_p=TOP_P(top_p), seed=SEED(seed)
    )


def within_ceiling(max_new_tokens: Any, ceiling: int) -> int:
    """`max_new_tokens` as /generate's caller sent it, checked against the operator's ceiling
    (FairShare.max_api_tokens; 0: none): a gr.Error that names the ceiling past it."""
    if not ceiling:
        return Whole("max_new_tokens", 1)(max_new_tokens)
    return Whole("max_new_tokens", 1, ceiling, why="the most this server writes in one run")(max_new_tokens)


def generate_updates(
    lm: LanguageModel,
    prompt: Any,
    max_new_tokens: Any = 20,
    sample: Any = False,
    temperature: Any = 1.0,
    top_k: Any = 0,
    top_p: Any = 1.0,
    seed: Any = 0,
    layers: Any = False,
    attention: Any = False,
    *,
    client: Hashable = None,
) -> Iterator[dict]:
    """The /generate endpoint: one JSON object per token, at full speed (no pacing). `client`: whom
    the run is for, so that the batcher shares its passes fairly (TokenStepper.client). `layers` and
    `attention` add the "Why this token?" views of each token (tokstep.core.why_records)."""
    max_new_tokens = Whole("max_new_tokens", 1, lm.context_length or MAX_API_TOKENS)(max_new_tokens)
    sampling = api_sampling(sample, temperature, top_k, top_p, seed)
    layers, attention = LAYERS(layers), ATTENTION(attention)
    try:
        stepper = new_stepper(lm, prompt)
    except PromptError as error:
        raise user_error(str(error), title="Cannot generate") from None
    stepper.client = client
    views = WhyViews(lm, stepper.ids, layers, attention) if layers or attention else None
    # The run loop queues the next token's pass before each token goes out, so it joins the next
    # batch while Gradio sends this one; a client that goes away closes the run (and that pass).
    try:
        for step in run_steps(stepper, max_new_tokens, API_TOP_K, sampling):
            update = step_update(stepper, step)
            if views is not None:
                update |= views.of(stepper.ids[: step.position])
            yield update
    except EngineError as error:  # the client has every token so far; a new request starts over
        raise gr.Error(str(error), title=error.title, print_exception=False) from None


class WhyViews:
    """The views a /generate run asked for, for each of its tokens: read along the run with one
    WhyReader (a token's pass each). The first reading, on the prompt, is made at once: a view that
    this runtime or model cannot give (a serving engine; attention on a model without any) refuses
    the run before its first token, saying why. The first token's fields are that reading (the reader
    gives it again without a pass)."""

    def __init__(self, lm: LanguageModel, prompt_ids: list[int], layers: bool, attention: bool) -> None:
        self.texts, self.layers, self.attention = lm.texts, layers, attention
        self.reader = WhyReader(lm, API_TOP_K, lens=layers, attention=attention)
        first = self.reader.read(prompt_ids)
        for asked, view, note, argument in (
            (layers, first.lens, first.lens_note, "layers"),
            (attention, first.attention, first.attention_note, "attention"),
        ):
            if asked and view is None:
                raise user_error(f"{note} Call again without {argument}.", title="Not available")

    def of(self, ids: list[int]) -> dict[str, Any]:
        """The fields for the token chosen after `ids`."""
        return why_fields(self.reader.read(ids), self.texts, self.layers, self.attention)


# The two forms of /generate, bound to the page's `lm_for` and `clients` (tokstep.web.bind) and given to
# gr.api, which takes the schema from their signatures (less `request`, which Gradio fills in) and the API
# page's description from their docstrings. A page without a model list keeps /generate's arguments
# exactly as they were: there is no model to name.
def generate(
    lm_for: Callable[[str], LanguageModel],
    clients: ClientLimits,
    prompt: str,
    max_new_tokens: int = 20,
    sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    model: str = "",
    layers: bool = False,
    attention: bool = False,
    request: gr.Request | None = None,
) -> Iterator[dict]:
    clients.left_queue(request)  # counted as waiting when it joined (tokstep.web.queue_admission)
    yield from shared_updates(
        lm_for, clients, prompt, max_new_tokens, sample, temperature, top_k, top_p, seed, model, layers, attention,
        request,
    )  # fmt: skip


def shared_updates(
    lm_for: Callable[[str], LanguageModel],
    clients: ClientLimits,
    prompt: Any,
    max_new_tokens: Any,
    sample: Any,
    temperature: Any,
    top_k: Any,
    top_p: Any,
    seed: Any,
    model: Any,
    layers: Any,
    attention: Any,
    request: Any,
) -> Iterator[dict]:
    """/generate's updates within its caller's fair share (`request`: a gr.Request, or a Starlette
    request on the plain route)."""
    # First, before the model is even looked up: a caller past its share leaves the queue at once.
    tokens = within_ceiling(max_new_tokens, clients.share.max_api_tokens)
    cost = WHY_TOKEN_COST if LAYERS(layers) or ATTENTION(attention) else 1
    with clients.api_run(request, tokens * cost) as share:
        updates = generate_updates(
            lm_for(model), prompt, tokens, sample, temperature, top_k, top_p, seed, layers, attention,
            client=share.client,
        )  # fmt: skip
        for update in updates:
            share.wrote(cost)
            yield update


def generate_on_the_one_model(
    lm_for: Callable[[str], LanguageModel],
    clients: ClientLimits,
    prompt: str,
    max_new_tokens: int = 20,
    sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    layers: bool = False,
    attention: bool = False,
    request: gr.Request | None = None,
) -> Iterator[dict]:
    yield from generate(
        lm_for, clients, prompt, max_new_tokens, sample, temperature, top_k, top_p, seed,
        layers=layers, attention=attention, request=request,
    )  # fmt: skip


generate.__doc__ = GENERATE_DOC + MODEL_ARGUMENT_DOC
generate_on_the_one_model.__doc__ = GENERATE_DOC


def stream_updates(
    lm_for: Callable[[str], LanguageModel], clients: ClientLimits, arguments: dict[str, Any], request: Any
) -> Iterator[dict]:
    """/generate for the plain server-sent events route (tokstep.web.stream_route), by argument name;
    its caller is named by `request` (a Starlette request) as /generate's is. It never waited in
    Gradio's queue."""
    yield from shared_updates(lm_for, clients, **arguments, request=request)
