"""The stepping engine: token ids in, one chosen token and the model's distribution out.

It knows nothing of Gradio. Its phases, as in any KV-cached decoder:
  prefill            run the whole prompt once; keep the KV cache and the last logits
  next-token probs   softmax over the *whole* vocabulary (never renormalised over top-k)
  choose             greedy = argmax of the logits (what `generate(do_sample=False)` does),
                     a token the user picked, or a seeded draw (see tokstep.core.sampling)
  append             add the chosen *id*; the next forward pass reads only that one token
  undo               drop the last id and crop the KV cache back; the distribution before
                     it is recomputed from the cropped cache, never stored per step

Text is never decoded and re-tokenized on the way: the seed notebook did that, which can
change earlier tokens and costs a forward pass over the whole sequence per token.
"""

from __future__ import annotations

import math
import operator
import threading
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import torch
from transformers.cache_utils import Cache

from tokstep.core.distribution import Estimate, NextTokenSummary, Sampler, SamplerName
from tokstep.core.forward import ForwardResult, PassCancelled, PendingPass, SequenceKey
from tokstep.core.model import LanguageModel
from tokstep.core.path_tree import PathTree
from tokstep.core.sampling import SamplingSettings
from tokstep.core.tokens import tokenize

StopReason = Literal["end_of_text", "max_new_tokens", "context_full"]

# How a generated token was chosen: the most likely one, the user's pick, or a seeded draw.
ChosenBy = Literal["greedy", "user", "sampled"]

# Coarse bands of a token's rank, for colouring: how surprising the token was to the model.
RankBucket = Literal["top 1", "top 10", "top 100", "beyond"]

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
    # The fields below are set by the engine; their defaults only serve Steps built by hand.
    chosen_by: ChosenBy = "greedy"
    rank: int = 1  # 1 + the number of tokens the model gave more probability than this one
    entropy: float = 0.0  # of the model's whole next-token distribution, in bits
    # Wall time of the forward pass that gave this distribution plus the choice. Timing is
    # not part of what a Step *is*, so two Steps that agree on everything else are equal.
    elapsed_ms: float = field(default=0.0, compare=False)
    # Only when the token was stepped with sampling settings (None otherwise):
    sampling: SamplingSettings | None = None  # the settings used
    sampling_prob: float | None = None  # the chosen token's probability after temperature and filtering
    sampling_top: list[float] | None = None  # the same for each token of `top`, in its order
    sampling_kept: int | None = None  # how many tokens the filters left to draw from
    # Whose sampler drew a sampled token and gave the sampling_* numbers: "tokstep" (its own seeded
    # draw over the full distribution, in process) or "engine" (a serving engine's sampler, seeded
    # from the same seed and position). None when stepped without sampling settings.
    sampler: SamplerName | None = None
    # Which numbers are estimates rather than exact: "entropy" (a serving engine returns only the
    # top tokens) and "sampling" (the sampler's numbers, when its filters reach past them). Empty in process.
    estimates: frozenset[Estimate] = frozenset()


class TokenScore(NamedTuple):
    """How likely the model found one prompt token, given the tokens before it."""

    position: int  # index in the prompt
    token_id: int
    token: str  # display text
    prob: float | None  # full-vocabulary probability; None for the first token (nothing before it)
    rank: int | None  # 1 = the model's most likely choice there; None for the first token


class PromptError(ValueError):
    """A prompt the model cannot continue; the message says why and what to do."""


class UndoError(ValueError):
    """Undo asked for when no generated token is left: only the prompt remains."""


class RunStopped(Exception):
    """A run of steps was stopped (TokenStepper.stop_runs) before this step of it began, or while
    the step waited for a pass the runtime cancelled (nothing was appended then)."""


def rank_bucket(rank: int) -> RankBucket:
    """The band a 1-based rank falls in: "top 1", "top 10", "top 100" or "beyond"."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be a whole number of 1 or more, got {rank!r}.")
    if rank == 1:
        return "top 1"
    if rank <= 10:
        return "top 10"
    if rank <= 100:
        return "top 100"
    return "beyond"


def top_k(lm: LanguageModel, summary: NextTokenSummary, k: int) -> tuple[list[TokenProb], float]:
    """The k most likely tokens (highest first) and the probability mass outside them.

    From the summary's top tokens when it holds k of them, else from its full softmax (or, for a
    serving engine, another request for more)."""
    ids, values = summary.top(k)
    top = [TokenProb(token_id, lm.texts.text(token_id), prob) for token_id, prob in zip(ids, values, strict=True)]
    return top, max(0.0, 1.0 - math.fsum(values))


def check_token_id(token_id: int, vocab_size: int) -> int:
    """`token_id` as a plain int in 0..vocab_size - 1 (numpy and torch ints too), or a ValueError."""
    try:
        index = operator.index(token_id)
    except TypeError:
        index = None
    if isinstance(token_id, bool) or index is None or not 0 <= index < vocab_size:
        raise ValueError(f"token_id must be in 0..{vocab_size - 1}, got {token_id!r}.")
    return index


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
    like `model.generate`. `undo` crops the KV cache instead of starting over, so going
    back one token also costs one token's forward pass.

    >>> stepper = TokenStepper.from_text(lm, "Once upon a time")
    >>> stepper.step().chosen_by, stepper.step(sampling=SamplingSettings(seed=1)).chosen_by
    ('greedy', 'sampled')
    >>> stepper.undo().chosen_by
    'sampled'
    """

    def __init__(self, lm: LanguageModel, prompt_ids: Sequence[int], prompt_text: str | None = None) -> None:
        self.lm = lm
        self.ids: list[int] = [int(i) for i in prompt_ids]
        self.prompt_length = len(self.ids)
        # The prompt as the user typed it: decoding its ids need not give it back exactly.
        self.prompt_text = prompt_text if prompt_text is not None else lm.texts.decode(self.ids)
        check_prompt_length(lm, self.prompt_length)
        # One Step per generated token, in order: steps[i] is how generated_ids[i] was chosen.
        # A Step holds only its top-k, never the whole distribution, so this stays small.
        self.steps: list[Step] = []
        self._cache = None  # transformers Cache holding keys/values of ids[:_cached]
        self._cached = 0
        # The next token's distribution after ids[:_cached] (logits, full softmax, top tokens).
        self._next: NextTokenSummary | None = None
        self._next_forward_ms = 0.0  # wall time of the pass that gave _next
        # The pass for ids[_cached:], queued ahead by `prefetch` and not yet read, or None.
        self._prefetched: PendingPass | None = None
        self._lock = threading.Lock()  # one step at a time per sequence
        self._prompt_scores: list[TokenScore] | None = None
        self._runs_stopped = 0  # how many times stop_runs was called: runs started before it end
        # Whom this sequence steps for, as its caller names them (a server's page session or API
        # caller); handed to the runtime with every pass (`sequence`), which may share its passes
        # between clients by it. None: the sequence is a client of its own.
        self.client: Hashable = None
        # Every path taken from this prompt (tokstep.core.path_tree): Undo and `go_to` leave the
        # path they change there as a branch. A Step adds nothing to it (the tree reads `steps`).
        self.paths = PathTree()

    @classmethod
    def from_text(cls, lm: LanguageModel, prompt: str) -> TokenStepper:
        """A stepper for a text prompt; PromptError for an empty or over-long one."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise PromptError("The prompt is empty. Type some text for the model to continue.")
        return cls(lm, tokenize(lm.tokenizer, prompt), prompt)

    @property
    def sequence(self) -> SequenceKey:
        """How this stepper names itself to the model's Forward: itself, and the client it steps for."""
        return SequenceKey(id(self), self.client)

    @property
    def generated_ids(self) -> list[int]:
        return self.ids[self.prompt_length :]

    @property
    def room_left(self) -> int | None:
        """How many more tokens fit in the model's context (None: no limit)."""
        if self.lm.context_length is None:
            return None
        return self.lm.context_length - len(self.ids)

    @property
    def can_undo(self) -> bool:
        """Whether there is a generated token to take back."""
        return len(self.ids) > self.prompt_length

    def generated_text(self) -> str:
        """The generated tokens decoded together (bytes split over tokens join up)."""
        return self.lm.texts.decode(self.generated_ids)

    def text(self) -> str:
        """The prompt followed by everything generated so far."""
        return self.prompt_text + self.generated_text()

    def _forward_pending(self) -> NextTokenSummary:
        """Feed the ids not yet in the KV cache; return the next token's distribution.

        The pass goes through the model's Forward (`lm.forward`): a direct call, or a runtime
        in which other sessions' tokens may share the pass. RunStopped when `stop_runs`
        cancelled it."""
        if self._next_is_current:
            return self._next
        request, self._prefetched = self._prefetched, None
        try:
            if request is not None:
                self._take(self.lm.forward.collect(request))
            else:
                self._take(self.lm.forward.forward(*self._pending_pass(), sequence=self.sequence))
        except PassCancelled:  # stop_runs cancelled the pass (a serving engine's request): nothing changed
            raise RunStopped("Stopped while the model read the sequence: nothing was appended.") from None
        return self._next

    def _pending_pass(self) -> tuple[list[int], Cache | None, int]:
        """The pass the next distribution needs, as a Forward takes it: the ids not yet in the
        KV cache (the whole prompt at first, then one token), the cache, and its length.

        With no cache, every id: none yet, one given back, or a model that returns none (a stateful
        model, such as RecurrentGemma, keeps its state inside itself, for one sequence at a time)."""
        if self._cache is None:
            return list(self.ids), None, 0
        return self.ids[self._cached :], self._cache, self._cached

    @property
    def _next_is_current(self) -> bool:
        """Whether `_next` is the distribution after every id (no pass is pending)."""
        return self._next is not None and self._cached == len(self.ids)

    def _take(self, result: ForwardResult) -> None:
        """Keep the pass's result for ids[_cached:]: the cache now holds every id."""
        # Waiting for another pass is not this token's cost: only its own pass is timed.
        self._next_forward_ms = result.forward_ms
        self._cache = result.cache
        self._cached = len(self.ids)
        self._next = result.summary
        if self._cache is not None:  # a model that returns no cache leaves nothing to keep
            self.lm.forward.cache_kept(self)

    def prefetch(self) -> None:
        """Queue the pass that the next step needs (the newest token's) and return at once.

        A run calls this before it hands a token out: in a runtime that runs passes ahead, while
        the caller shows that token, the pass joins the next batch, so a class's next pass need
        not wait for every session's page update. Nothing is guessed: it is the pass the next
        step would run anyway, and the next step waits for it. Does nothing when no pass is
        pending, or when the runtime does not run passes ahead (the direct call never does)."""
        with self._lock:
            if self._prefetched is None and not self._next_is_current:
                self._prefetched = self.lm.forward.prefetch(*self._pending_pass(), sequence=self.sequence)

    def drop_prefetch(self) -> None:
        """Withdraw a prefetched pass that no step will read (the run was stopped). A pass already
        running it ends normally; the cache it extends is then dropped (read again if needed)."""
        with self._lock:
            self._drop_prefetch()

    def start_run(self) -> int:
        """A mark for a run of steps about to start: `step(run=mark)` raises RunStopped once
        `stop_runs` has been called since."""
        with self._lock:
            return self._runs_stopped

    def stop_runs(self) -> None:
        """Stop every run of steps started so far (see `start_run`). A step in progress ends
        first, and this waits for it (a runtime that can cancels its pass: the step then raises
        RunStopped and appends nothing); no step of those runs begins afterwards. So a page that
        shows the sequence once this returns shows every token its stopped runs appended: a
        run's thread that resumes after the stop (a server cancelling it does not stop that
        thread) takes no further step."""
        # A step in progress holds the lock while it waits for its pass: a runtime whose pass can
        # take seconds (a serving engine's request) cancels it, and refuses new ones, meanwhile.
        forward = self.lm.forward
        forward.interrupt(self.sequence)
        try:
            with self._lock:
                self._runs_stopped += 1
        finally:
            forward.resume(self.sequence)

    def end_run(self) -> None:
        """A run of steps ended (finished or stopped): withdraw its prefetched pass, and tell the
        runtime not to expect this sequence back, so no pass waits for it."""
        self.drop_prefetch()
        self.lm.forward.run_ended(self.sequence)

    def _drop_prefetch(self) -> None:
        request, self._prefetched = self._prefetched, None
        if request is None or self.lm.forward.withdraw(request):
            return
        if request.done and request.result is not None:
            self._take(request.result)  # it ran already: as good as any later pass
        else:
            self._cache, self._cached, self._next = None, 0, None  # a pass is writing into it now

    def release(self, blocking: bool = True) -> bool:
        """Give back the KV cache and next-token logits; ids and steps stay.

        The next step reads the whole sequence again (one prefill). Returns False, without
        waiting, when `blocking` is False and the sequence is busy in another thread.
        """
        if not self._lock.acquire(blocking=blocking):
            return False
        try:
            self._drop_prefetch()
            self._cache, self._cached, self._next = None, 0, None
            self.lm.forward.cache_dropped(self)
        finally:
            self._lock.release()
        return True

    @property
    def holds_cache(self) -> bool:
        """Whether this sequence keeps a KV cache in memory now."""
        return self._cache is not None

    def next_token_logits(self) -> torch.Tensor:
        """The model's logits for the next token: (vocab,). Sampling filters start from these.
        ValueError on a runtime that returns only the top tokens (a serving engine)."""
        with self._lock:
            return _whole(self._forward_pending().logits, self.lm, "logits")

    def next_sampler(self, sampling: SamplingSettings) -> Sampler:
        """The distribution the next token would be drawn from under `sampling` (its `prob` of any
        token; `estimated` when the runtime could only estimate it)."""
        with self._lock:
            return self._forward_pending().sampler(sampling)

    def next_summary(self) -> NextTokenSummary:
        """The next token's distribution as the runtime gave it (the whole of it in process; the top
        tokens from a serving engine): what tokstep.core.explain reads."""
        with self._lock:
            return self._forward_pending()

    def prompt_scores(self) -> list[TokenScore]:
        """How likely the model found each prompt token (computed once: the prompt never changes)."""
        if self._prompt_scores is None:
            self._prompt_scores = score_prompt(self.lm, self.ids[: self.prompt_length])
        return self._prompt_scores

    def next_token_probs(self) -> torch.Tensor:
        """The model's distribution for the next token: (vocab,), full softmax. ValueError on a
        runtime that returns only the top tokens (a serving engine): use `next_top`."""
        with self._lock:
            return _whole(self._forward_pending().probs, self.lm, "probabilities")

    def next_top(self, k: int = 5) -> tuple[list[TokenProb], float]:
        """The k most likely next tokens and the mass outside them."""
        check_top_k(self.lm, k)
        with self._lock:
            return top_k(self.lm, self._forward_pending(), k)

    def step(
        self,
        top_k_size: int = 5,
        token_id: int | None = None,
        sampling: SamplingSettings | None = None,
        run: int | None = None,
    ) -> Step:
        """Append one token and return its Step. The token is, in this order of precedence:

        - `token_id` when given (chosen_by "user"),
        - a draw from the model's distribution after `sampling`'s temperature, top-k and
          top-p, reproducible from (sampling.seed, position) (chosen_by "sampled"),
        - otherwise the most likely token (chosen_by "greedy").

        `prob`, `top` and `rest_prob` are always the model's own probabilities. With
        `sampling` (also for a user's token), the Step also says what the sampler gave the
        chosen token and each token of `top`. Raises PromptError when the context is full, and
        RunStopped when `run` (a mark from `start_run`) was stopped.
        """
        check_top_k(self.lm, top_k_size)
        if sampling is not None and not isinstance(sampling, SamplingSettings):
            raise TypeError(f"sampling must be a SamplingSettings or None, got {type(sampling).__name__}.")
        with self._lock:
            if run is not None and run != self._runs_stopped:
                raise RunStopped("This run was stopped: no more steps are taken for it.")
            if self.room_left is not None and self.room_left <= 0:
                raise PromptError(context_full_message(self.lm))
            summary = self._forward_pending()
            started = time.perf_counter()
            position = len(self.ids)
            # tokstep's own sampler over the full distribution, or (a serving engine) the engine's.
            drawn = summary.sampler(sampling) if sampling is not None else None
            chosen_by: ChosenBy
            if token_id is not None:
                token_id = check_token_id(token_id, self.lm.vocab_size)
                chosen_by = "user"
            elif drawn is not None:
                token_id = drawn.draw(position)
                chosen_by = "sampled"
            else:
                # argmax of the logits, exactly as greedy search in `generate` picks.
                token_id = summary.greedy_id
                chosen_by = "greedy"
            top, rest = top_k(self.lm, summary, top_k_size)
            stop_reason: StopReason | None = None
            if token_id in self.lm.eos_token_ids:
                stop_reason = "end_of_text"
            elif self.room_left is not None and self.room_left <= 1:  # this token takes the last place
                stop_reason = "context_full"
            step = Step(
                token_id=token_id,
                token=self.lm.texts.text(token_id),
                prob=summary.prob(token_id),
                top=top,
                rest_prob=rest,
                position=position,
                stop_reason=stop_reason,
                chosen_by=chosen_by,
                rank=summary.rank(token_id),
                entropy=summary.entropy,
                elapsed_ms=self._next_forward_ms + (time.perf_counter() - started) * 1000.0,
                sampling=sampling,
                sampling_prob=drawn.prob(token_id) if drawn is not None else None,
                sampling_top=[drawn.prob(c.token_id) for c in top] if drawn is not None else None,
                sampling_kept=drawn.kept if drawn is not None else None,
                sampler=drawn.name if drawn is not None else None,
                estimates=summary.estimates | ({"sampling"} if drawn is not None and drawn.estimated else set()),
            )
            self.ids.append(token_id)
            self.steps.append(step)
        return step

    def undo(self) -> Step:
        """Take back the last generated token and return its Step; UndoError at the prompt.

        Afterwards ids, `steps` and the next-token distribution are as they were before that
        token was appended. The KV cache is cropped to all but the last remaining token, and
        that token's one-token pass recomputes the distribution when it is next needed.
        """
        with self._lock:
            if not self.can_undo:
                raise UndoError("Nothing to undo: only the prompt is left. Step to generate a token first.")
            self.paths.follow(self.steps)  # the token taken back stays in the tree of paths
            self._drop_prefetch()  # the cache is cropped below: no pass may be writing into it
            self.ids.pop()
            step = self.steps.pop()
            # Keep the keys/values of ids[:-1]: feeding ids[-1] again gives the distribution
            # after it. The cache holds _cached positions (the popped token's, if it was fed).
            keep = len(self.ids) - 1
            if self._cache is not None and self._cached > keep and not self._crop_cache(keep):
                # Sliding-window or recurrent layers cannot be put back as they were: read
                # the whole sequence again.
                self._cache, self._cached = None, 0
            self._next = None
        return step

    def go_to(self, steps: Sequence[Step]) -> None:
        """Make the sequence the prompt followed by `steps`' tokens, with these Steps as its records:
        a path taken before (tokstep.core.path_tree.jump), put back exactly. The path left stays in
        the tree. The KV cache keeps the positions both paths share (cropped as `undo` crops it), and
        the next distribution reads the rest in one pass. ValueError for Steps that do not follow
        the prompt position by position, or that do not fit in the context."""
        steps = list(steps)
        for offset, step in enumerate(steps):
            expected = self.prompt_length + offset
            if step.position != expected:
                raise ValueError(f"Step {offset + 1} is at position {step.position}, not {expected}.")
            check_token_id(step.token_id, self.lm.vocab_size)
        limit = self.lm.context_length
        if limit is not None and self.prompt_length + len(steps) > limit:
            raise ValueError(context_full_message(self.lm))
        with self._lock:
            self.paths.follow(self.steps)
            ids = self.ids[: self.prompt_length] + [step.token_id for step in steps]
            if ids == self.ids:  # the same tokens: only the records change, the cache stays as it is
                self.steps[:] = steps
                self.paths.follow(self.steps)
                return
            self._drop_prefetch()  # the cache may be cropped below: no pass may be writing into it
            shared = self.prompt_length
            while shared < min(len(ids), len(self.ids)) and ids[shared] == self.ids[shared]:
                shared += 1
            # As after an undo, at least the last token is read again: the distribution after it.
            keep = min(shared, len(ids) - 1)
            if self._cache is not None and self._cached > keep and not self._crop_cache(keep):
                self._cache, self._cached = None, 0
            self.ids[:], self.steps[:] = ids, steps  # the same lists: callers may hold them
            self._next = None
            self.paths.follow(self.steps)

    def _crop_cache(self, keep: int) -> bool:
        """Crop the KV cache to its first `keep` positions; False when it cannot be put back as it
        was (the caller then drops it and reads the ids again).

        `is_croppable` alone does not tell: in transformers 5 a sliding-window layer whose window is
        full, and a linear-attention layer holding only a conv state (LFM2's), both say they are
        croppable, yet their `crop` raises RuntimeError unless they record their past
        (`activate_past_recording`, which tokstep does not ask for: it would keep every position).
        Layers cropped before the one that raised go with the rest of the dropped cache."""
        cache = self._cache
        if not callable(getattr(cache, "crop", None)) or not getattr(cache, "is_croppable", True):
            return False
        try:
            cache.crop(keep - self._cached)  # a negative count: remove that many positions
        except RuntimeError:
            return False
        self._cached = keep
        return True


def _whole(values: torch.Tensor | None, lm: LanguageModel, what: str) -> torch.Tensor:
    """A summary's full (vocab,) tensor, or a ValueError when its runtime has only the top tokens."""
    if values is None:
        raise ValueError(
            f"{lm.name}'s passes run in a serving engine, which returns the most likely tokens, not all "
            f"{lm.vocab_size:,} {what}: use next_top(k) for the top k."
        )
    return values


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


def score_prompt(lm: LanguageModel, ids: Sequence[int]) -> list[TokenScore]:
    """How likely the model found each token of `ids`, given the tokens before it.

    One uncached forward pass over the whole sequence: the logits at position i - 1 are
    the model's prediction for token i. The first token has nothing before it, so its
    prob and rank are None. PromptError when `ids` is longer than the model's context.

    >>> for score in score_prompt(lm, tokenize(lm.tokenizer, "Once upon a time")):
    ...     print(repr(score.token), score.prob, score.rank)  # ' upon' is rank 1 for a story model
    """
    ids = [int(i) for i in ids]
    if not ids:
        return []
    limit = lm.context_length
    if limit is not None and len(ids) > limit:
        raise PromptError(f"The text is {len(ids)} tokens, but {lm.name} reads at most {limit} tokens at once.")
    scores = [TokenScore(0, ids[0], lm.texts.text(ids[0]), None, None)]
    for position, (token_id, (prob, rank)) in enumerate(zip(ids[1:], lm.forward.prompt_scores(ids), strict=True), 1):
        scores.append(TokenScore(position, token_id, lm.texts.text(token_id), float(prob), int(rank)))
    return scores
