"""A serving engine as the runtime: every pass runs in vLLM, over HTTP; tokstep keeps the tokens.

    runtime = EngineRuntime("http://127.0.0.1:8000/v1")
    lm = runtime.load("tinystories")  # tokenizer and config here, no weights; checked against the engine
    for step in tokstep.generate_steps(lm, "Once upon a time"): ...

(`tokstep.load("tinystories", engine_url=...)` does the same.) What goes over the wire is OpenAI's
completions API as vLLM serves it (`POST /v1/completions`), and only token ids: tokstep tokenizes
and displays; the engine gets `prompt` as a list of ids, `max_tokens=1`, `logprobs=k`,
`return_tokens_as_token_ids` (each returned token is its id, never a string to map back) and
`temperature=0` (the argmax: what `generate(do_sample=False)` picks). A pass is one request with
the whole sequence; the engine's own prefix cache holds the keys and values of what it has read,
so a request costs about one new token's pass. The "cache" tokstep keeps per sequence
(`EngineCache`) is the ids the engine has read, which Undo crops.

What the engine gives exactly, and what is estimated (`NextTokenSummary.estimates`, shown as "≈"):

- exact: the top-k tokens' probabilities over the whole vocabulary (vLLM's logprobs are the model's
  raw log-softmax, before any sampling setting), the mass outside them, the greedy token, and the
  probability and rank of any other token (asked for when needed: its id appended, with
  `prompt_logprobs`, which carry the rank; the same answer holds the distribution after it, which
  the next pass then reuses, so a pick outside the top-k costs no extra request);
- estimated ("entropy"): the entropy needs every probability. It is the midpoint of the two bounds
  the top-k leave (`entropy_from_top`); exact when the engine returned the whole vocabulary;
- sampling: the engine's sampler draws the token (`Step.sampler == "engine"`), seeded from the
  settings' seed and the position, so a draw repeats after Undo. The sampler's probabilities are
  computed here from the top-k: exact when the filters keep only top-k tokens (or temperature 1
  with no filter), else estimated ("sampling", see `sampler_from_top`).

Faults: every request has timeouts; a failure (unreachable, too slow, connection closed, an HTTP
error, an answer that is not a completion) raises `EngineError` with one readable sentence. Nothing
is changed on failure: the sequence keeps its tokens, and the next step sends the same request again.
A Stop cancels the sequence's request in flight (`EngineForward.interrupt`, which the stepper's
`stop_runs` calls): its connection is closed, vLLM aborts the request when its client goes, and the
step ends at once with `PassCancelled`, the sequence unchanged. Requests run on one event loop
thread (httpx's async client), because only a coroutine can be cancelled while it waits: a
blocking call in a worker thread cannot be stopped from outside.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
import pydantic
import torch

from tokstep.core.distribution import NextTokenSummary, SamplerName
from tokstep.core.forward import CacheHolder, Forward, ForwardResult, PassCancelled, PendingPass
from tokstep.core.loading import HUB_TIMEOUT_S, load_without_weights
from tokstep.core.model import LanguageModel, ModelLoadError
from tokstep.core.sampling import SamplingSettings
from tokstep.core.tokens import tokenize

DEFAULT_TIMEOUT_S = 20.0  # for one request's answer: a step of a small model takes milliseconds
CONNECT_TIMEOUT_S = 3.0  # an engine that does not accept a connection this fast is down
DEFAULT_LOGPROBS = 20  # tokens per answer: the page's largest top-k, and vLLM's default --max-logprobs
PREFETCH_THREADS = 64  # requests queued ahead at once (runs' next passes; they wait on the network)
MEMO_SIZE = 256  # distributions that came with a lookup, kept for the pass that follows it
LOGPROB_FLOOR = -9999.0  # vLLM sends -inf as this (JSON has no infinity)
# What a step's error adds: nothing the page had is lost, and the next step asks again.
RETRY = "Your tokens are kept: step again to retry."
# A text to probe the engine's tokenizer with: plain words, so every tokenizer gives them back.
PROBE_TEXT = "Once upon a time, the quick brown fox jumped over 12 lazy dogs."


class EngineError(ModelLoadError):
    """The serving engine failed or refused: the message says what happened and what to do.

    A ModelLoadError, so a model that cannot be served at start-up is reported like any model that
    cannot be loaded. The web layer shows it with `title`."""

    title = "Serving engine"


class EngineCache:
    """The ids the engine has read for one sequence: tokstep's side of the engine's prefix cache.

    It has the verbs the stepper uses on a KV cache, so Undo works as in process."""

    is_croppable = True

    def __init__(self, ids: Sequence[int]) -> None:
        self.ids = list(ids)

    def get_seq_length(self) -> int:
        return len(self.ids)

    def crop(self, max_length: int) -> None:
        """Keep the first `max_length` ids; a negative count removes that many (as transformers' caches)."""
        keep = len(self.ids) + max_length if max_length < 0 else max_length
        del self.ids[max(0, keep) :]

    @staticmethod
    def holding(cache: Any, ids: list[int]) -> EngineCache:
        """`cache` (an EngineCache) now holding `ids`, or a new EngineCache when there is none."""
        if isinstance(cache, EngineCache):
            cache.ids = ids
            return cache
        return EngineCache(ids)


# --- what the engine answers -------------------------------------------------------------------


class _LogProbs(pydantic.BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]


class _PromptLogprob(pydantic.BaseModel):
    logprob: float
    rank: int | None = None


class _Choice(pydantic.BaseModel):
    text: str = ""
    logprobs: _LogProbs | None = None
    prompt_logprobs: list[dict[str, _PromptLogprob] | None] | None = None


class _Completion(pydantic.BaseModel):
    choices: list[_Choice] = pydantic.Field(min_length=1)


class _ServedModel(pydantic.BaseModel):
    id: str
    max_model_len: int | None = None


class _ModelList(pydantic.BaseModel):
    data: list[_ServedModel]


@dataclass(frozen=True)
class Answer:
    """One completion's next-token numbers, checked: the token it chose and the top tokens."""

    chosen_id: int  # the token the engine's sampler chose (greedy: the argmax)
    chosen_logprob: float
    top: list[tuple[int, float]]  # (id, logprob), most likely first, as many as asked for
    choice: _Choice


# --- numbers from the top-k --------------------------------------------------------------------


def entropy_from_top(top_probs: Sequence[float], vocab_size: int) -> tuple[float, float, float]:
    """(estimate, low, high) of a distribution's entropy in bits from its top probabilities.

    The tokens outside share the rest r, each at most the smallest top probability p_min. The
    tail's part of the entropy is smallest when r sits on as few tokens as that allows,
    r·log2(1/p_min), and largest when spread evenly over the other V - k, r·log2((V - k)/r). The
    estimate is the midpoint, so it is off by at most half the gap. (On the bundled model, 20 of
    2,048 tokens: 0.06 bits off on average; 100 tokens: 0.01.) Exact when k = V or r = 0.
    """
    known = [p for p in top_probs if p > 0]
    head = -math.fsum(p * math.log2(p) for p in known)
    rest = max(0.0, 1.0 - math.fsum(known))
    others = vocab_size - len(top_probs)
    if rest <= 1e-12 or others <= 0 or not known:
        return head, head, head
    low = head + rest * math.log2(1.0 / min(known))
    high = head + rest * math.log2(others / rest)
    high = max(high, low)
    return (low + high) / 2.0, low, high


@dataclass(frozen=True)
class SamplerNumbers:
    """The sampler's distribution as far as the top-k tell it (see `sampler_from_top`)."""

    probs: dict[int, float]  # each top-k token the filters keep, and its sampler probability
    kept: int  # how many tokens the filters keep (estimated when the tail is kept)
    tail_scale: float  # a tail token with model probability p gets p**(1/T) * tail_scale (0: none kept)
    exact: bool


def sampler_from_top(top: Sequence[tuple[int, float]], vocab_size: int, settings: SamplingSettings) -> SamplerNumbers:
    """The sampler's probabilities after temperature, top-k and top-p, from the top tokens' logprobs
    (most likely first), with tokstep's filter rules (tokstep.core.sampling, as in transformers).

    Exact when every token kept is among `top` (top_k no larger than it, or the nucleus closed inside
    it with a known normaliser), or when nothing is filtered at temperature 1. Otherwise the tokens
    outside `top` count with an estimate (`_tail_weight`), and so does the nucleus's size.
    """
    temperature = settings.temperature
    logprobs = [max(lp, LOGPROB_FLOOR) for _, lp in top]
    ids = [token_id for token_id, _ in top]
    probs = [math.exp(lp) for lp in logprobs]
    rest = max(0.0, 1.0 - math.fsum(probs))
    others = max(0, vocab_size - len(top))
    # Weights p**(1/T), relative to the most likely token's, so that none overflows.
    weights = [math.exp((lp - logprobs[0]) / temperature) for lp in logprobs]
    unit = probs[0] ** (1.0 / temperature)  # the most likely token's own weight
    kept, tail_kept, tail_weight, exact = len(ids), 0, 0.0, True
    if 0 < settings.top_k < len(ids):
        threshold = logprobs[settings.top_k - 1]
        kept = sum(1 for lp in logprobs if lp >= threshold)  # ties with the k-th stay, as in filter_top_k
    elif rest > 1e-12 and others > 0 and (settings.top_k == 0 or settings.top_k > len(ids)):
        tail_kept = others if settings.top_k == 0 else min(others, settings.top_k - len(ids))
        tail_weight, exact = _tail_weight(rest, others, tail_kept, probs[-1], temperature)
        tail_weight /= unit
    total = math.fsum(weights[:kept]) + tail_weight
    shares = [w / total for w in weights[:kept]]
    nucleus = 1.0  # the mass the filters keep, to renormalise by
    if settings.top_p < 1.0:
        # Keep a token while the mass before it is below p (the rule of filter_top_p).
        mass, cut = 0.0, None
        for index, share in enumerate(shares):
            if mass >= settings.top_p:
                cut = index
                break
            mass += share
        if cut is None and (tail_weight == 0 or mass >= settings.top_p):
            cut = len(shares)
        if cut is not None:
            # Closed inside the top tokens. Which ones it kept depended on the normaliser, so the
            # numbers are exact when that was (no tail, or the whole tail at temperature 1).
            kept, shares, tail_kept, tail_weight = cut, shares[:cut], 0, 0.0
            nucleus = math.fsum(shares)
        else:
            # It reaches into the tokens nobody returned: each has at most the last top token's
            # share, so it takes at least `fewest` more; assume twice that, within the tail.
            missing = settings.top_p - mass
            fewest = math.ceil(missing / shares[-1]) if shares[-1] > 0 else tail_kept
            tail_kept = min(tail_kept, max(1, 2 * fewest))
            nucleus = settings.top_p + shares[-1] / 2.0  # it closes at most one token's share past p
            exact = False
    shares = [share / nucleus for share in shares]
    scale = 1.0 / (total * unit * nucleus) if tail_kept > 0 else 0.0
    return SamplerNumbers(dict(zip(ids[:kept], shares, strict=True)), kept + tail_kept, scale, exact)


def _tail_weight(rest: float, others: int, kept: int, p_min: float, temperature: float) -> tuple[float, bool]:
    """The summed weight p**(1/T) of the `kept` most likely of the `others` tokens outside the top,
    which share the mass `rest`, each at most `p_min`; and whether it is exact (all kept, T = 1).

    The estimate is the midpoint of two extremes: the mass spread evenly over all `others`, and
    packed onto as few tokens as `p_min` allows (the kept ones the most likely of those)."""
    if temperature == 1.0 and kept == others:
        return rest, True
    power = 1.0 / temperature
    even = kept * (rest / others) ** power
    full = min(float(kept), rest / p_min)  # tokens at p_min before the mass runs out
    packed = math.floor(full) * p_min**power + (rest - math.floor(full) * p_min if full < kept else 0.0) ** power
    return (even + packed) / 2.0, False


def draw_seed(seed: int, position: int) -> int:
    """The engine's seed for the draw at `position`: from (seed, position) alone, as tokstep's own
    draws (tokstep.core.sampling.draw_generator), within the int64 range the engine takes."""
    digest = hashlib.blake2b(f"tokstep:{seed}:{position}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


# --- the summary, the sampler, the forward -----------------------------------------------------


@dataclass(frozen=True, eq=False)
class EngineSummary(NextTokenSummary):
    """A next-token distribution the engine gave as its top tokens (no full tensors here).

    `prob` and `rank` of a token outside the top ask the engine (one request, kept)."""

    engine: EngineForward | None = field(default=None, repr=False)
    ids: tuple[int, ...] = field(default=(), repr=False)  # the sequence it follows
    known: dict[int, tuple[float, int]] = field(default_factory=dict, repr=False)  # lookups: (prob, rank)
    more: dict[int, tuple[list[int], list[float]]] = field(default_factory=dict, repr=False)  # longer top-ks

    def prob(self, token_id: int) -> float:
        return self._numbers(token_id)[0]

    def rank(self, token_id: int) -> int:
        return self._numbers(token_id)[1]

    def _numbers(self, token_id: int) -> tuple[float, int]:
        try:
            index = self.top_ids.index(token_id)
        except ValueError:
            index = None
        if index is not None:
            prob = self.top_probs[index]
            return prob, 1 + sum(1 for p in self.top_probs if p > prob)
        if token_id not in self.known:
            self.known[token_id] = self.engine.lookup(self.ids, token_id)
        return self.known[token_id]

    def top(self, k: int) -> tuple[list[int], list[float]]:
        if k <= len(self.top_ids):
            return self.top_ids[:k], self.top_probs[:k]
        if k not in self.more:
            answer = self.engine.ask(list(self.ids), logprobs=k)
            top = answer.top[:k]
            self.more[k] = ([i for i, _ in top], [math.exp(max(lp, LOGPROB_FLOOR)) for _, lp in top])
        return self.more[k]

    def sampler(self, settings: SamplingSettings) -> EngineSampler:
        return EngineSampler(self, settings)


class EngineSampler:
    """The engine's seeded sampler, with its probabilities worked out from the top tokens."""

    name: SamplerName = "engine"

    def __init__(self, summary: EngineSummary, settings: SamplingSettings) -> None:
        self.summary = summary
        self.settings = settings
        top_ids, top_probs = summary.top_ids, summary.top_probs
        if settings.top_k > len(top_ids):
            # A top-k past what came back: ask for that many, to make its numbers exact. An engine
            # that returns fewer (its --max-logprobs) leaves them estimated.
            with contextlib.suppress(EngineError):
                top_ids, top_probs = summary.top(settings.top_k)
        logprobs = [math.log(p) if p > 0 else LOGPROB_FLOOR for p in top_probs]
        self.top_ids = top_ids
        self.numbers = sampler_from_top(list(zip(top_ids, logprobs, strict=True)), summary.engine.vocab_size, settings)

    @property
    def kept(self) -> int:
        return self.numbers.kept

    @property
    def estimated(self) -> bool:
        return not self.numbers.exact

    def prob(self, token_id: int) -> float:
        if token_id in self.numbers.probs:
            return self.numbers.probs[token_id]
        if self.numbers.tail_scale == 0 or token_id in self.top_ids:
            return 0.0  # filtered out
        return self.summary.prob(token_id) ** (1.0 / self.settings.temperature) * self.numbers.tail_scale

    def draw(self, position: int) -> int:
        settings = self.settings
        answer = self.summary.engine.ask(
            list(self.summary.ids),
            temperature=settings.temperature,
            top_k=settings.top_k,
            top_p=settings.top_p,
            seed=draw_seed(settings.seed, position),
        )
        return answer.chosen_id


@dataclass(eq=False)
class EnginePending(PendingPass):
    """A pass sent ahead to the engine (a run's next token), answered in a worker thread."""

    future: Future | None = field(default=None, repr=False)


class EngineForward(Forward):
    """Passes of one model through the engine's completions API (see the module docstring)."""

    runs_where = "in a serving engine, which sends back only the most likely next tokens"  # so no `inspect`

    def __init__(self, runtime: EngineRuntime, lm: LanguageModel, served_name: str) -> None:
        self.runtime = runtime
        self.client = runtime.client
        self.served_name = served_name
        self.vocab_size = lm.vocab_size
        self.context_length = lm.context_length
        self._memo: OrderedDict[tuple[int, ...], EngineSummary] = OrderedDict()
        self._memo_lock = threading.Lock()

    # The seam ---------------------------------------------------------------------------------

    def forward(self, ids: Sequence[int], cache: Any, cached: int, sequence: Hashable) -> ForwardResult:
        seen = cache.ids[:cached] if isinstance(cache, EngineCache) else []
        sequence_ids = [*seen, *(int(i) for i in ids)]
        started = time.perf_counter()
        summary = self._remembered(sequence_ids) or self.distribution(sequence_ids, sequence)
        forward_ms = (time.perf_counter() - started) * 1000.0
        # Only now, with an answer in hand: a failed request leaves the sequence as it was.
        return ForwardResult(EngineCache.holding(cache, sequence_ids), summary, forward_ms)

    def prompt_logits(self, ids: Sequence[int]) -> torch.Tensor:
        raise ValueError(
            "A serving engine returns the most likely tokens and their probabilities, not the logits over the "
            "whole vocabulary: use score_prompt for the prompt's probabilities and ranks."
        )

    def prompt_scores(self, ids: Sequence[int]) -> list[tuple[float, int]]:
        if len(ids) < 2:
            return []
        answer = self.ask(list(ids), logprobs=1, prompt_logprobs=0)
        scores = []
        for position, token_id in enumerate(ids[1:], start=1):
            scores.append(_prompt_entry(self, answer.choice, position, int(token_id)))
        return scores

    def prefetch(self, ids: Sequence[int], cache: Any, cached: int, sequence: Hashable) -> PendingPass | None:
        pending = EnginePending(list(ids), cache, cached, sequence)
        pending.future = self.runtime.pool.submit(self._run_pending, pending)
        return pending

    def collect(self, pending: PendingPass) -> ForwardResult:
        assert isinstance(pending, EnginePending) and pending.future is not None
        return pending.future.result()  # the request's own timeout bounds the wait

    def withdraw(self, pending: PendingPass) -> bool:
        return isinstance(pending, EnginePending) and pending.future is not None and pending.future.cancel()

    def cache_kept(self, holder: CacheHolder) -> None:
        """Nothing to bound here: a sequence's cache is its ids; the keys and values live in the engine."""

    # Requests ---------------------------------------------------------------------------------

    def _run_pending(self, pending: EnginePending) -> ForwardResult:
        try:
            pending.result = self.forward(pending.ids, pending.cache, pending.cached, pending.sequence)
            return pending.result
        except BaseException as error:
            pending.error = error
            raise
        finally:
            pending.done = True

    def distribution(self, ids: list[int], sequence: Hashable = None) -> EngineSummary:
        """The next token's distribution after `ids`: one greedy request for the top tokens, which
        `interrupt(sequence)` cancels."""
        return self._summary(ids, self.ask(ids, sequence=sequence))

    def interrupt(self, sequence: Hashable) -> None:
        self.client.interrupt(sequence)

    def resume(self, sequence: Hashable) -> None:
        self.client.resume(sequence)

    def ask(
        self,
        ids: list[int],
        *,
        logprobs: int | None = None,
        prompt_logprobs: int | None = None,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        retry: bool = True,
        sequence: Hashable = None,
    ) -> Answer:
        """One completion of one token after `ids`, its top `logprobs` tokens read and checked."""
        count = logprobs or self.runtime.logprobs
        payload: dict[str, Any] = {
            "model": self.served_name,
            "prompt": ids,
            "max_tokens": 1,
            "logprobs": count,
            "temperature": temperature,
            "return_tokens_as_token_ids": True,
            # The engine must not stop early or add tokens of its own: the ids are what it reads.
            "ignore_eos": True,
            "add_special_tokens": False,
        }
        if temperature > 0:
            payload.update(top_k=top_k, top_p=top_p, seed=seed)
        if prompt_logprobs is not None:
            payload["prompt_logprobs"] = prompt_logprobs
        what = f"the next token after {len(ids)} tokens"
        body = self.client.post("/completions", payload, what=what, retry=retry, sequence=sequence)
        return _read_answer(self.client, body, count, self.vocab_size, retry)

    def lookup(self, ids: Sequence[int], token_id: int) -> tuple[float, int]:
        """The probability and rank of `token_id` after `ids`, for a token outside the top.

        One request with the token appended: its prompt logprob carries the rank, and the answer's
        own top tokens are the distribution after it, kept for the pass that comes next."""
        ids = list(ids)
        if self.context_length is not None and len(ids) + 2 > self.context_length:
            # No room to append it and still ask for a token: its probability alone, rank from above.
            return self._lookup_at_the_end(ids, token_id)
        answer = self.ask([*ids, token_id], prompt_logprobs=0)
        prob, rank = _prompt_entry(self, answer.choice, len(ids), token_id)
        self._remember([*ids, token_id], self._summary([*ids, token_id], answer))
        return prob, rank

    def _lookup_at_the_end(self, ids: list[int], token_id: int) -> tuple[float, int]:
        payload = {
            "model": self.served_name,
            "prompt": ids,
            "max_tokens": 1,
            "temperature": 0.0,
            "logprobs": self.runtime.logprobs,
            "logprob_token_ids": [token_id],
            "return_tokens_as_token_ids": True,
            "ignore_eos": True,
            "add_special_tokens": False,
        }
        body = self.client.post("/completions", payload, what="one token's probability")
        choice = _parse(self.client, body, _Completion).choices[0]
        entries = (choice.logprobs.top_logprobs[0] or {}) if choice.logprobs and choice.logprobs.top_logprobs else {}
        for key, logprob in entries.items():
            if _token_id(self.client, key, self.vocab_size) == token_id:
                # Outside the top DEFAULT_LOGPROBS: its rank is at least one more than they are.
                return math.exp(max(logprob, LOGPROB_FLOOR)), self.runtime.logprobs + 1
        raise self.client.garbage(f"no probability for token {token_id}")

    def _summary(self, ids: list[int], answer: Answer) -> EngineSummary:
        top_ids = [token_id for token_id, _ in answer.top]
        top_probs = [math.exp(max(lp, LOGPROB_FLOOR)) for _, lp in answer.top]
        entropy, _, _ = entropy_from_top(top_probs, self.vocab_size)
        exact_entropy = len(top_ids) >= self.vocab_size
        return EngineSummary(
            logits=None,
            probs=None,
            entropy=entropy,
            greedy_id=answer.chosen_id,
            top_ids=top_ids,
            top_probs=top_probs,
            estimates=frozenset() if exact_entropy else frozenset({"entropy"}),
            engine=self,
            ids=tuple(ids),
        )

    def _remember(self, ids: list[int], summary: EngineSummary) -> None:
        with self._memo_lock:
            self._memo[tuple(ids)] = summary
            while len(self._memo) > MEMO_SIZE:
                self._memo.popitem(last=False)

    def _remembered(self, ids: list[int]) -> EngineSummary | None:
        with self._memo_lock:
            return self._memo.pop(tuple(ids), None)


def _prompt_entry(forward: EngineForward, choice: _Choice, position: int, token_id: int) -> tuple[float, int]:
    """(probability, rank) of the prompt token at `position` from an answer's prompt logprobs."""
    entries = choice.prompt_logprobs
    if entries is None or len(entries) <= position or entries[position] is None:
        raise forward.client.garbage(f"no prompt logprob at position {position}")
    entry = entries[position].get(str(token_id))
    if entry is None or entry.rank is None or entry.rank < 1:
        raise forward.client.garbage(f"no rank for token {token_id} at position {position}")
    return math.exp(max(entry.logprob, LOGPROB_FLOOR)), entry.rank


def _parse(client: EngineClient, body: Any, model: type[pydantic.BaseModel]) -> Any:
    try:
        return model.model_validate(body)
    except pydantic.ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "the answer"
        raise client.garbage(f"{where}: {first['msg']}") from None


def _token_id(client: EngineClient, key: str, vocab_size: int) -> int:
    """The id in a returned token "token_id:N" (return_tokens_as_token_ids), checked to be in the vocabulary."""
    prefix, _, number = key.partition(":")
    if prefix != "token_id" or not number.isdigit() or not 0 <= int(number) < vocab_size:
        raise client.garbage(f"a token {key[:40]!r} that is not an id of this model's {vocab_size:,} tokens")
    return int(number)


def _read_answer(client: EngineClient, body: Any, count: int, vocab_size: int, retry: bool = True) -> Answer:
    try:
        return _checked_answer(client, body, count, vocab_size)
    except EngineError as error:
        if retry:
            raise
        raise client.error_type(str(error).replace(f" {RETRY}", "")) from None


def _checked_answer(client: EngineClient, body: Any, count: int, vocab_size: int) -> Answer:
    choice = _parse(client, body, _Completion).choices[0]
    logprobs = choice.logprobs
    if logprobs is None or not logprobs.tokens or not logprobs.top_logprobs or not logprobs.top_logprobs[0]:
        raise client.garbage("no logprobs for the token it chose")
    chosen = _token_id(client, logprobs.tokens[0], vocab_size)
    chosen_logprob = logprobs.token_logprobs[0]
    entries = [(_token_id(client, key, vocab_size), value) for key, value in logprobs.top_logprobs[0].items()]
    if chosen_logprob is None or any(not math.isfinite(v) or v > 1e-4 for _, v in entries):
        raise client.garbage("logprobs that are not log-probabilities")
    # The token it chose comes first and again among the top (or as one more, when it is not).
    entries.sort(key=lambda entry: -entry[1])
    return Answer(chosen, chosen_logprob, entries[:count], choice)


# --- HTTP --------------------------------------------------------------------------------------


class EngineClient:
    """HTTP to the engine's OpenAI-compatible API, with timeouts; every failure is an EngineError."""

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None,
        timeout_s: float,
        error_type: type[EngineError] = EngineError,
    ) -> None:
        url = (url or "").strip().rstrip("/")
        self.error_type = error_type
        if not url.startswith(("http://", "https://")):
            raise error_type(
                f"The engine URL must start with http:// or https://, got {url!r}: give the base of its "
                "OpenAI-compatible API, e.g. http://127.0.0.1:8000/v1."
            )
        self.url = url
        self.timeout_s = timeout_s
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # Every request is a coroutine on this loop, so a Stop can cancel one while it waits.
        self._loop = asyncio.new_event_loop()
        self._io = threading.Thread(target=self._loop.run_forever, name="tokstep-engine-io", daemon=True)
        self._io.start()
        self.http = self._on_loop(self._new_http(url, headers, timeout_s)).result()
        self._calls_lock = threading.Lock()
        self._in_flight: dict[Hashable, set[concurrent.futures.Future]] = {}
        self._interrupted: dict[Hashable, int] = {}  # sequence -> interrupts in effect

    @staticmethod
    async def _new_http(url: str, headers: dict[str, str], timeout_s: float) -> httpx.AsyncClient:
        return httpx.AsyncClient(  # made on the loop that uses it
            base_url=url,
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=min(CONNECT_TIMEOUT_S, timeout_s)),
            limits=httpx.Limits(max_connections=PREFETCH_THREADS + 64, max_keepalive_connections=PREFETCH_THREADS),
            trust_env=False,  # a proxy from the environment must not sit between tokstep and its engine
        )

    def _on_loop(self, coroutine: Any) -> concurrent.futures.Future:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    def interrupt(self, sequence: Hashable) -> None:
        """Cancel `sequence`'s requests in flight (their connections close, so the engine aborts
        them) and refuse its new ones until `resume(sequence)`; both raise PassCancelled."""
        with self._calls_lock:
            self._interrupted[sequence] = self._interrupted.get(sequence, 0) + 1
            in_flight = list(self._in_flight.get(sequence, ()))
        for call in in_flight:
            call.cancel()

    def resume(self, sequence: Hashable) -> None:
        with self._calls_lock:
            left = self._interrupted.pop(sequence, 0) - 1
            if left > 0:
                self._interrupted[sequence] = left

    def garbage(self, detail: str, retry: bool = True) -> EngineError:
        return self.error_type(
            f"The serving engine at {self.url} answered something that is not a completion tokstep can read "
            f"({detail}). Is it a vLLM server?" + (f" {RETRY}" if retry else "")
        )

    def get(self, path: str, *, what: str) -> Any:
        return self._request("GET", path, None, what, retry=False)

    def post(
        self, path: str, payload: dict[str, Any], *, what: str, retry: bool = True, sequence: Hashable = None
    ) -> Any:
        """The JSON answer to `payload`. `retry`: the request is a step's (the message says the tokens
        are kept and the next step retries), not one of the checks at start-up. `sequence`: whose
        request it is, for `interrupt`."""
        return self._request("POST", path, payload, what, retry=retry, sequence=sequence)

    def _send(self, method: str, path: str, payload: dict[str, Any] | None, sequence: Hashable) -> httpx.Response:
        """The engine's response, waited for in this thread while the loop thread sends and reads."""
        call = self._on_loop(self.http.request(method, path.lstrip("/"), json=payload))
        with self._calls_lock:
            if sequence is not None and sequence in self._interrupted:
                call.cancel()
                raise PassCancelled("The request was cancelled: its run was stopped.")
            if sequence is not None:
                self._in_flight.setdefault(sequence, set()).add(call)
        try:
            return call.result()
        except concurrent.futures.CancelledError:
            raise PassCancelled("The request was cancelled: its run was stopped.") from None
        finally:
            if sequence is not None:
                with self._calls_lock:
                    calls = self._in_flight.get(sequence)
                    if calls is not None:
                        calls.discard(call)
                        if not calls:
                            del self._in_flight[sequence]

    def _request(
        self, method: str, path: str, payload: dict[str, Any] | None, what: str, retry: bool, sequence: Hashable = None
    ) -> Any:
        again = RETRY if retry else "tokstep cannot start on it."
        try:
            response = self._send(method, path, payload, sequence)
        except (httpx.ConnectError, httpx.ConnectTimeout) as error:
            raise self.error_type(
                f"The serving engine at {self.url} cannot be reached ({_reason(error)}). Check that it is running "
                f"and that the URL is right. {again}"
            ) from None
        except httpx.TimeoutException:
            raise self.error_type(
                f"The serving engine at {self.url} did not answer within {self.timeout_s:g} s (asked for {what}). "
                f"It may be overloaded. {again}"
            ) from None
        except httpx.HTTPError as error:  # the connection closed or broke mid-answer
            raise self.error_type(
                f"The serving engine at {self.url} closed the connection before answering ({_reason(error)}). {again}"
            ) from None
        if response.status_code in (401, 403):
            raise self.error_type(
                f"The serving engine at {self.url} refused tokstep's requests (HTTP {response.status_code}): "
                "give its API key with --engine-api-key or TOKSTEP_ENGINE_API_KEY."
            )
        if response.status_code != 200:
            raise self.error_type(
                f"The serving engine at {self.url} refused the request for {what} "
                f"(HTTP {response.status_code}: {_engine_message(response)}). {again}"
            )
        try:
            return response.json()
        except ValueError:
            raise self.garbage(f"not JSON: {response.text[:60]!r}", retry) from None

    def close(self) -> None:
        """Close the connections and stop the loop thread."""
        if self._loop.is_closed():
            return
        with contextlib.suppress(concurrent.futures.TimeoutError, RuntimeError):
            self._on_loop(self.http.aclose()).result(timeout=CONNECT_TIMEOUT_S)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._io.join(timeout=CONNECT_TIMEOUT_S)
        if not self._io.is_alive():
            self._loop.close()


def _reason(error: Exception) -> str:
    text = str(error).strip() or type(error).__name__
    return text[:200]


def _engine_message(response: httpx.Response) -> str:
    """The engine's own error message (OpenAI's {"error": {"message": ...}}), or the start of its answer."""
    try:
        body = response.json()
        message = body["error"]["message"] if isinstance(body.get("error"), dict) else body.get("detail", body)
    except (ValueError, AttributeError, KeyError, TypeError):
        message = response.text
    return " ".join(str(message).split())[:300] or response.reason_phrase  # one line, whatever it sent


# --- the runtime -------------------------------------------------------------------------------


class EngineRuntime:
    """Every pass of the models it serves runs in one serving engine (vLLM's OpenAI-compatible API).

    `serve(lm)` checks that the engine serves `lm.name` with the same vocabulary, and returns `lm`
    with its passes through the engine (and its context length the engine's, when shorter); an lm
    it serves already comes back as it is. `load(name)` loads only the tokenizer and config first.
    `error_type` is the EngineError subclass raised (the web layer passes one Gradio shows).
    """

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        logprobs: int = DEFAULT_LOGPROBS,
        error_type: type[EngineError] = EngineError,
    ) -> None:
        if isinstance(logprobs, bool) or not isinstance(logprobs, int) or logprobs < 1:
            raise ValueError(f"logprobs must be a whole number of 1 or more, got {logprobs!r}.")
        self.client = EngineClient(url, api_key=api_key, timeout_s=timeout_s, error_type=error_type)
        self.url = self.client.url
        self.logprobs = logprobs
        self.error_type = error_type
        self.pool = ThreadPoolExecutor(PREFETCH_THREADS, thread_name_prefix="tokstep-engine")

    def served_models(self) -> dict[str, int | None]:
        """The names the engine serves, each with its context length (vLLM's max_model_len) if given."""
        body = self.client.get("/models", what="the list of its models")
        models = _parse(self.client, body, _ModelList)
        return {model.id: model.max_model_len for model in models.data}

    def load(self, name: str | None = None, *, hub_timeout: float = HUB_TIMEOUT_S) -> LanguageModel:
        """The model `name` served by the engine: its tokenizer and config loaded here (bundled name,
        folder or Hub id, as tokstep.load), no weights. Without a name, the one model the engine serves."""
        if name is None or not str(name).strip():
            served = self.served_models()
            if len(served) != 1:
                raise self.error_type(
                    f"The serving engine at {self.url} serves {len(served)} models ({', '.join(sorted(served))}): "
                    "name the one to use with --model."
                )
            (name,) = served
        return self.serve(load_without_weights(name, hub_timeout=hub_timeout))

    def serve(self, lm: LanguageModel) -> LanguageModel:
        if isinstance(lm.forward, EngineForward) and lm.forward.runtime is self:
            return lm
        served = self.served_models()
        if lm.name not in served:
            names = ", ".join(sorted(served)) or "none"
            raise self.error_type(
                f"The serving engine at {self.url} does not serve the model {lm.name!r} (it serves: {names}). "
                f"Start it with --served-model-name {lm.name}, or run tokstep with --model set to one of those."
            )
        engine_context = served[lm.name]
        context = lm.context_length
        if engine_context is not None and (context is None or engine_context < context):
            context = engine_context
        served_lm = dataclasses.replace(lm, context_length=context)
        served_lm.forward = EngineForward(self, served_lm, lm.name)
        self._check_vocabulary(served_lm)
        return served_lm

    def _check_vocabulary(self, lm: LanguageModel) -> None:
        """Refuse an engine whose model reads ids differently: the probe's text must come back the
        same, the tokenizer's last id must be taken, and the first id past the vocabulary refused."""
        forward = lm.forward
        assert isinstance(forward, EngineForward)
        ids = tokenize(lm.tokenizer, PROBE_TEXT)
        last_id = len(lm.tokenizer) - 1
        body = self.client.post(
            "/completions",
            {
                "model": forward.served_name,
                "prompt": ids,
                "max_tokens": 1,
                "temperature": 0.0,
                "echo": True,
                "add_special_tokens": False,
            },
            what="a probe of its tokenizer",
            retry=False,
        )
        echoed = _parse(self.client, body, _Completion).choices[0].text
        expected = lm.tokenizer.decode(ids)
        if not echoed.startswith(expected):
            raise self.error_type(
                f"The serving engine at {self.url} reads token ids differently from {lm.name}'s tokenizer here: "
                f"ids {ids[:6]}… are {echoed[: len(expected)]!r} there and {expected!r} here. Serve the same model "
                "as tokstep loads (the same folder or Hub id)."
            )
        forward.ask([ids[0], last_id], logprobs=1, retry=False)  # an EngineError if its vocabulary is smaller
        try:
            forward.ask([ids[0], lm.vocab_size], logprobs=1, retry=False)
        except EngineError:
            return  # refused, as it must be
        raise self.error_type(
            f"The serving engine at {self.url} takes token id {lm.vocab_size}, past the {lm.vocab_size:,} of "
            f"{lm.name}'s vocabulary: it serves another model under that name."
        )

    def close(self) -> None:
        """Stop the prefetch threads and close the connections."""
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()
