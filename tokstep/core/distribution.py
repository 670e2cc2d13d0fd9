"""The next-token distribution and what tokstep shows of it, for one row or a whole batch.

After a forward pass the batcher summarises every row of the batch at once: the full softmax,
its entropy, the greedy token, and the SUMMARY_TOP_K most likely tokens, each in
one tensor op over the (batch, vocab) logits. Each session's thread then only reads its row's
plain numbers. Thirty threads each running those ops on their own (vocab,) row would each
start torch's multi-threaded kernels at the same moment and fight over the cores (see
docs/performance.md, "Threads"); one op over the batch costs about what one row's does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Protocol

import torch

from tokstep.core.sampling import SamplingSettings, sample_token, sampling_probs

# The page's largest top-k: every step it shows is read from the summary. A larger k (the
# engine allows up to the vocabulary) is computed from `probs` when asked for.
SUMMARY_TOP_K = 20


def logits_to_probs(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the whole vocabulary, in fp32 even when the model runs in half precision.

    logits: (..., vocab) -> probs: (..., vocab), each row summing to 1.
    """
    return torch.softmax(logits.float(), dim=-1)


def entropies_bits(probs: torch.Tensor) -> torch.Tensor:
    """Entropy of each distribution, in bits: (..., vocab) -> (...).

    `entr` counts 0 * log 0 as 0, so tokens whose probability underflows add nothing. In fp32:
    within 3e-6 bits of a float64 sum over GPT-2's 50,257 tokens, at half the cost.
    """
    return torch.special.entr(probs).sum(dim=-1) / math.log(2)


def entropy_bits(probs: torch.Tensor) -> float:
    """Entropy of one distribution (vocab,), in bits: 0 when the model is sure, log2(vocab) at most."""
    return float(entropies_bits(probs))


def token_rank(probs: torch.Tensor, token_id: int) -> int:
    """1 + the number of tokens more likely than `token_id` under `probs` (vocab,); ties share a rank."""
    return int((probs > probs[token_id]).sum()) + 1


# Whose sampler draws a token: tokstep's own seeded draw from the full distribution in this process,
# or a serving engine's, given the same settings and a seed made from (seed, position).
SamplerName = Literal["tokstep", "engine"]

# The numbers of a step that a runtime may only estimate (a serving engine returns the top tokens,
# not the whole distribution): the entropy, and the sampler's probabilities after temperature/top-p.
Estimate = Literal["entropy", "sampling"]


class Sampler(Protocol):
    """The distribution a sampled token is drawn from (after temperature, top-k and top-p)."""

    name: SamplerName
    kept: int  # how many tokens the filters leave to draw from
    estimated: bool  # `prob` and `kept` are estimates, not exact

    def prob(self, token_id: int) -> float:
        """The sampler's probability of `token_id`."""
        ...

    def draw(self, position: int) -> int:
        """One token, drawn reproducibly for (the settings' seed, `position`)."""
        ...


class TensorSampler:
    """tokstep's own sampler over the full (vocab,) logits: exact, drawn in this process."""

    name: SamplerName = "tokstep"
    estimated = False

    def __init__(self, logits: torch.Tensor, settings: SamplingSettings) -> None:
        self.settings = settings
        self.probs = sampling_probs(logits, settings)  # (vocab,)

    @property
    def kept(self) -> int:
        return int((self.probs > 0).sum())

    def prob(self, token_id: int) -> float:
        return float(self.probs[token_id])

    def draw(self, position: int) -> int:
        return sample_token(self.probs, self.settings, position)


@dataclass(frozen=True, eq=False)
class NextTokenSummary:
    """One row's next-token distribution and the numbers a step shows of it.

    A runtime that has the whole distribution (the model in this process) fills in `logits` and
    `probs`. One that has only the most likely tokens (a serving engine) leaves them None and
    subclasses this: `prob`, `rank`, `top` and `sampler` then ask it, and `estimates` names what
    it could only estimate."""

    logits: torch.Tensor | None  # (vocab,) as the model gave them; None: not in this process
    probs: torch.Tensor | None  # (vocab,) full softmax, fp32; None: not in this process
    entropy: float  # of `probs`, in bits (an estimate when "entropy" is in `estimates`)
    greedy_id: int  # argmax of the logits: what greedy search (and `generate`) picks
    top_ids: list[int]  # the min(SUMMARY_TOP_K, vocab) most likely tokens, highest first
    top_probs: list[float]  # their probabilities
    estimates: frozenset[Estimate] = field(default=frozenset())  # which numbers are estimates, not exact
    # The last sampler `sampler` gave, by its settings: the page's view, its settings' help and the
    # Step after them ask for the same one, and each costs a softmax (with top-p, a sort of the vocabulary).
    _samplers: dict[SamplingSettings, Sampler] = field(default_factory=dict, init=False, repr=False)

    def top(self, k: int) -> tuple[list[int], list[float]]:
        """The k most likely tokens, highest first, and their probabilities."""
        if k <= len(self.top_ids):
            return self.top_ids[:k], self.top_probs[:k]
        top_values, top_indices = torch.topk(self.probs, k)  # (k,), (k,)
        return top_indices.tolist(), top_values.tolist()

    def sampler(self, settings: SamplingSettings) -> Sampler:
        """The distribution a token is drawn from under `settings` (tokstep's own, from the logits); the
        same object again while the settings stay the same (one kept: it holds a (vocab,) tensor)."""
        kept = self._samplers.get(settings)
        if kept is None:
            kept = TensorSampler(self.logits, settings)
            self._samplers.clear()
            self._samplers[settings] = kept
        return kept

    def prob(self, token_id: int) -> float:
        """`token_id`'s probability (read from the top tokens when it is the most likely one)."""
        return self.top_probs[0] if token_id == self.top_ids[0] else float(self.probs[token_id])

    def rank(self, token_id: int) -> int:
        """`token_id`'s rank under `probs` (see token_rank).

        The most likely token is rank 1 without counting: no token is more likely than it. The
        greedy token is almost always that one; when rounding gives another token the same
        probability, it is counted like any other."""
        return 1 if token_id == self.top_ids[0] else token_rank(self.probs, token_id)


def summarize(logits: torch.Tensor) -> list[NextTokenSummary]:
    """A summary per row of `logits` (batch, vocab), computed for the whole batch at once."""
    probs = logits_to_probs(logits)  # (B, vocab)
    greedy = torch.argmax(logits, dim=-1)  # (B,)
    top_probs, top_ids = torch.topk(probs, min(SUMMARY_TOP_K, probs.shape[-1]), dim=-1)  # (B, K), (B, K)
    entropies = entropies_bits(probs)  # (B,)
    # One device-to-host copy per quantity for the whole batch.
    rows = zip(greedy.tolist(), top_ids.tolist(), top_probs.tolist(), entropies.tolist(), strict=True)
    return [
        NextTokenSummary(logits[row], probs[row], entropy, greedy_id, ids, values)
        for row, (greedy_id, ids, values, entropy) in enumerate(rows)
    ]
