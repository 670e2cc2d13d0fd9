"""Seeded sampling: how a token is drawn instead of taking the most likely one.

The steps, in the order `model.generate(do_sample=True)` applies them:
  apply_temperature   logits / T: T < 1 sharpens the distribution, T > 1 flattens it
  filter_top_k        keep only the k highest logits (0 = off)
  filter_top_p        keep the smallest set of most likely tokens whose mass reaches p (the "nucleus")
  sampling_probs      softmax of what is left: the distribution the token is drawn from
  sample_token        one draw from it, with a random number fixed by (seed, position)

Filtered tokens get the logit -inf, so their probability is exactly 0: `sampling_probs`
always covers the whole vocabulary. The model's own distribution is never changed; the
engine shows both side by side.

Reproducibility: the random number for the token at sequence position `position` comes
from a generator seeded by (seed, position) alone. The same seed, settings and text so far
give the same token every time, also after undoing a token and stepping again.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch

MAX_TEMPERATURE = 10.0  # far flatter than anyone needs; beyond it every token looks alike


@dataclass(frozen=True)
class SamplingSettings:
    """How to draw the next token. The defaults draw from the model's own distribution.

    >>> SamplingSettings(temperature=0.7, top_k=50, top_p=0.9, seed=42)
    """

    temperature: float = 1.0  # divides the logits; 1.0 = the model's distribution unchanged
    top_k: int = 0  # keep the k most likely tokens; 0 = keep all
    top_p: float = 1.0  # keep the most likely tokens until their mass reaches p; 1.0 = keep all
    seed: int = 0  # with the position, fixes the random number of each draw

    def __post_init__(self) -> None:
        if not (_is_number(self.temperature) and 0 < self.temperature <= MAX_TEMPERATURE):
            raise ValueError(
                f"temperature must be a number above 0 and at most {MAX_TEMPERATURE:g}, got {self.temperature!r}. "
                "For the most likely token every time, step without sampling (greedy)."
            )
        if not (_is_whole(self.top_k) and self.top_k >= 0):
            raise ValueError(f"top_k must be a whole number of 0 (off) or more, got {self.top_k!r}.")
        if not (_is_number(self.top_p) and 0 < self.top_p <= 1):
            raise ValueError(f"top_p must be a number above 0 and at most 1 (1 = off), got {self.top_p!r}.")
        if not (_is_whole(self.seed) and self.seed >= 0):
            raise ValueError(f"seed must be a whole number of 0 or more, got {self.seed!r}.")


def _is_whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    """A finite int or float (not a bool, which Python counts as an int)."""
    return (_is_whole(value) or isinstance(value, float)) and math.isfinite(value)


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """logits / temperature, in fp32. (..., vocab) -> (..., vocab)."""
    return logits.float() / temperature


def filter_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Set every logit below the k-th highest to -inf; k = 0 keeps all. (..., vocab) -> (..., vocab).

    Tokens tied with the k-th highest are kept too, as transformers' TopKLogitsWarper does.
    """
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth_highest = torch.topk(logits, k).values[..., -1:]  # (..., 1)
    return logits.masked_fill(logits < kth_highest, -math.inf)


def filter_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability adds up to at least p;
    set the rest to -inf. p = 1 keeps all. (..., vocab) -> (..., vocab).

    The cumulative sum runs from the *least* likely token up, and a token goes when the
    mass up to and including it is at most 1 - p: the same arithmetic as transformers'
    TopPLogitsWarper, so both keep exactly the same set. The most likely token always stays.
    """
    if p >= 1.0:
        return logits
    sorted_logits, sorted_ids = torch.sort(logits, dim=-1, descending=False)  # (..., vocab), least likely first
    mass_up_to = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)  # (..., vocab)
    remove_sorted = mass_up_to <= 1 - p
    remove_sorted[..., -1] = False  # the most likely token
    remove = remove_sorted.scatter(-1, sorted_ids, remove_sorted)  # back to vocabulary order
    return logits.masked_fill(remove, -math.inf)


def sampling_probs(logits: torch.Tensor, settings: SamplingSettings) -> torch.Tensor:
    """The distribution a sampled token is drawn from: temperature, top-k, top-p, softmax.

    logits: (vocab,) the model's raw next-token logits -> probs: (vocab,) in fp32, summing
    to 1, exactly 0 for every filtered token.
    """
    scaled = apply_temperature(logits, settings.temperature)  # (vocab,)
    kept = filter_top_p(filter_top_k(scaled, settings.top_k), settings.top_p)  # (vocab,), -inf where filtered
    return torch.softmax(kept, dim=-1)


def draw_generator(seed: int, position: int) -> torch.Generator:
    """A CPU generator whose state depends only on (seed, position).

    A hash, not seed + position: with a sum, seed 1 at position 10 would draw what seed 2
    draws at position 9, and neighbouring seeds would give shifted copies of each other.
    """
    digest = hashlib.blake2b(f"tokstep:{seed}:{position}".encode(), digest_size=8).digest()
    return torch.Generator(device="cpu").manual_seed(int.from_bytes(digest, "little"))


def sample_token(probs: torch.Tensor, settings: SamplingSettings, position: int) -> int:
    """One token drawn from `probs` (vocab,) with the random number for (settings.seed, position).

    Inverse-CDF draw on the CPU in fp64: u uniform in [0, total), the token is the first
    whose cumulative probability exceeds u. It is the same on every device, and a token
    with probability 0 can never be drawn (its cumulative sum equals its neighbour's).
    """
    cumulative = probs.detach().to("cpu", torch.float64).cumsum(dim=0)  # (vocab,)
    total = float(cumulative[-1])
    if not total > 0:
        raise ValueError("Cannot sample: every token has probability 0.")
    u = torch.rand((1,), generator=draw_generator(settings.seed, position), dtype=torch.float64) * total  # (1,)
    token_id = int(torch.searchsorted(cumulative, u, right=True))
    # u * total can round up to total itself; then take the last token that can be drawn.
    last_possible = int(torch.nonzero(probs.detach().cpu() > 0)[-1])
    return min(token_id, last_possible)
