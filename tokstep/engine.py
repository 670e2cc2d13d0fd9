"""The stepping engine: token ids in, one chosen token and the model's distribution out.

It knows nothing of Gradio. Its phases, as in any KV-cached decoder:
  prefill            run the whole prompt once; keep the KV cache and the last logits
  next-token probs   softmax over the *whole* vocabulary (never renormalised over top-k)
  choose             greedy = argmax of the logits (what `generate(do_sample=False)` does)
  append             add the chosen *id*; the next forward pass reads only that one token

Text is never decoded and re-tokenized on the way: the seed notebook did that, which can
change earlier tokens and costs a forward pass over the whole sequence per token.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Literal, NamedTuple

import torch

from tokstep.loading import LanguageModel
from tokstep.tokens import tokenize

StopReason = Literal["end_of_text", "max_new_tokens", "context_full"]

STOP_REASON_TEXT: dict[str, str] = {
    "end_of_text": "the model wrote its end-of-text token",
    "max_new_tokens": "the number of tokens asked for was reached",
    "context_full": "the model's context is full: it cannot read more tokens",
}


class TokenProb(NamedTuple):
    """One candidate for the next token: (token_id, token, prob)."""

    token_id: int
    token: str
    prob: float


@dataclass(frozen=True)
class Step:
    """One generated token and the distribution it was chosen from."""

    token_id: int  # the token chosen (greedy: the argmax)
    token: str  # its display text (partial UTF-8 shown as bytes)
    prob: float  # the probability the model gave it, full-vocabulary softmax
    top: list[TokenProb]  # the top-k candidates, highest first
    rest_prob: float  # probability mass of every token outside `top`
    position: int  # index of this token in the whole sequence, prompt included
    stop_reason: StopReason | None = None  # set on the last step of a run


class PromptError(ValueError):
    """A prompt the model cannot continue; the message says why and what to do."""


def logits_to_probs(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the whole vocabulary, in fp32 even when the model runs in half precision.

    logits: (vocab,) -> probs: (vocab,), summing to 1.
    """
    return torch.softmax(logits.float(), dim=-1)


def top_k(lm: LanguageModel, probs: torch.Tensor, k: int) -> tuple[list[TokenProb], float]:
    """The k most likely tokens (highest first) and the probability mass outside them."""
    values, indices = torch.topk(probs, k)  # (k,), (k,)
    top = [
        TokenProb(int(token_id), lm.texts.text(int(token_id)), float(prob))
        for prob, token_id in zip(values.tolist(), indices.tolist(), strict=True)
    ]
    return top, max(0.0, 1.0 - float(values.sum()))


def check_top_k(lm: LanguageModel, k: int) -> int:
    """`k` as an int in 1..vocab size, or a ValueError that says the range."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= lm.vocab_size:
        raise ValueError(f"top_k must be a whole number from 1 to {lm.vocab_size}, got {k!r}.")
    return k


class TokenStepper:
    """One sequence being written: its token ids, KV cache and next-token logits.

    Each `step` costs one token's forward pass (the first one also reads the prompt).
    The forward pass for the newest token runs lazily, when its distribution is first
    needed, so a run of n tokens costs the prompt plus n - 1 single-token passes,
    like `model.generate`.
    """

    def __init__(self, lm: LanguageModel, prompt_ids: Sequence[int], prompt_text: str | None = None) -> None:
        self.lm = lm
        self.ids: list[int] = [int(i) for i in prompt_ids]
        self.prompt_length = len(self.ids)
        # The prompt as the user typed it: decoding its ids need not give it back exactly.
        self.prompt_text = prompt_text if prompt_text is not None else lm.texts.decode(self.ids)
        check_prompt_length(lm, self.prompt_length)
        self._cache = None  # transformers Cache holding keys/values of ids[:_cached]
        self._cached = 0
        self._next_logits: torch.Tensor | None = None  # (vocab,), after ids[:_cached]
        self._lock = threading.Lock()  # one step at a time per sequence

    @classmethod
    def from_text(cls, lm: LanguageModel, prompt: str) -> TokenStepper:
        """A stepper for a text prompt; PromptError for an empty or over-long one."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise PromptError("The prompt is empty. Type some text for the model to continue.")
        return cls(lm, tokenize(lm.tokenizer, prompt), prompt)

    @property
    def generated_ids(self) -> list[int]:
        return self.ids[self.prompt_length :]

    @property
    def room_left(self) -> int | None:
        """How many more tokens fit in the model's context (None: no limit)."""
        if self.lm.context_length is None:
            return None
        return self.lm.context_length - len(self.ids)

    def generated_text(self) -> str:
        """The generated tokens decoded together (bytes split over tokens join up)."""
        return self.lm.texts.decode(self.generated_ids)

    def text(self) -> str:
        """The prompt followed by everything generated so far."""
        return self.prompt_text + self.generated_text()

    def _forward_pending(self) -> torch.Tensor:
        """Feed the ids not yet in the KV cache; return the next-token logits (vocab,)."""
        if self._next_logits is not None and self._cached == len(self.ids):
            return self._next_logits
        pending = torch.tensor([self.ids[self._cached :]], device=self.lm.device)  # (1, T_new)
        with self.lm.forward_lock, torch.inference_mode():
            # Prefill reads the whole prompt; later passes read one token. Either way only
            # the last position's logits are needed: (1, 1, vocab).
            output = self.lm.model(input_ids=pending, cache=self._cache, use_cache=True, logits_to_keep=1)
        self._cache = output.cache
        self._cached = len(self.ids)
        self._next_logits = output.logits[0, -1]
        return self._next_logits

    def next_token_probs(self) -> torch.Tensor:
        """The model's distribution for the next token: (vocab,), full softmax."""
        with self._lock:
            return logits_to_probs(self._forward_pending())

    def next_top(self, k: int = 5) -> tuple[list[TokenProb], float]:
        """The k most likely next tokens and the mass outside them."""
        return top_k(self.lm, self.next_token_probs(), check_top_k(self.lm, k))

    def step(self, top_k_size: int = 5, token_id: int | None = None) -> Step:
        """Append one token: the greedy choice, or `token_id` when given. Returns its Step.

        Raises PromptError when the context is already full.
        """
        check_top_k(self.lm, top_k_size)
        with self._lock:
            if self.room_left is not None and self.room_left <= 0:
                raise PromptError(context_full_message(self.lm))
            logits = self._forward_pending()  # (vocab,)
            probs = logits_to_probs(logits)  # (vocab,)
            if token_id is None:
                # argmax of the logits, exactly as greedy search in `generate` picks.
                token_id = int(torch.argmax(logits))
            elif not 0 <= token_id < probs.shape[0]:
                raise ValueError(f"token_id must be in 0..{probs.shape[0] - 1}, got {token_id}.")
            top, rest = top_k(self.lm, probs, top_k_size)
            position = len(self.ids)
            self.ids.append(token_id)
        stop_reason: StopReason | None = None
        if token_id in self.lm.eos_token_ids:
            stop_reason = "end_of_text"
        elif self.room_left is not None and self.room_left <= 0:
            stop_reason = "context_full"
        return Step(
            token_id=token_id,
            token=self.lm.texts.text(token_id),
            prob=float(probs[token_id]),
            top=top,
            rest_prob=rest,
            position=position,
            stop_reason=stop_reason,
        )


def context_full_message(lm: LanguageModel) -> str:
    return (
        f"The context is full: {lm.name} reads at most {lm.context_length} tokens, "
        "prompt and generated together. Reset, or start from a shorter prompt."
    )


def check_prompt_length(lm: LanguageModel, n_tokens: int) -> None:
    """PromptError unless a prompt of n_tokens leaves room for at least one new token."""
    if n_tokens == 0:
        raise PromptError("The prompt has no tokens. Type some text for the model to continue.")
    limit = lm.context_length
    if limit is not None and n_tokens >= limit:
        raise PromptError(
            f"The prompt is {n_tokens} tokens, but {lm.name} reads at most {limit} tokens, "
            f"its own included. Shorten the prompt to at most {limit - 1} tokens "
            f"(remove at least {n_tokens - limit + 1})."
        )


def check_max_new_tokens(max_new_tokens: int) -> int:
    """`max_new_tokens` as an int >= 0, or a ValueError that says what is wrong."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a whole number of 0 or more, got {max_new_tokens!r}.")
    return max_new_tokens


def generate_steps(
    lm: LanguageModel,
    prompt: str | Sequence[int],
    max_new_tokens: int = 20,
    top_k: int = 5,
) -> Iterator[Step]:
    """Greedy generation, one Step per token, with the model's top-k at each step.

    Stops on the end-of-text token, after `max_new_tokens`, or when the model's context
    is full; the last Step's `stop_reason` says which. Token for token the same as
    `model.generate(do_sample=False)`.

    >>> for step in generate_steps(lm, "Once upon a time", max_new_tokens=3):
    ...     print(step.token, round(step.prob, 3), step.stop_reason)
    """
    # Arguments are checked here, at the call, not at the first next().
    check_max_new_tokens(max_new_tokens)
    check_top_k(lm, top_k)
    stepper = TokenStepper.from_text(lm, prompt) if isinstance(prompt, str) else TokenStepper(lm, prompt)
    return _run_greedy(stepper, max_new_tokens, top_k)


def _run_greedy(stepper: TokenStepper, max_new_tokens: int, top_k: int) -> Iterator[Step]:
    for count in range(1, max_new_tokens + 1):
        step = stepper.step(top_k)
        if step.stop_reason is None and count == max_new_tokens:
            step = replace(step, stop_reason="max_new_tokens")
        yield step
        if step.stop_reason is not None:
            return
