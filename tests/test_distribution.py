"""The batch summary of next-token distributions equals each row computed on its own, from
the model's real logits: softmax, entropy, greedy token, top tokens, ranks."""

from __future__ import annotations

import math

import pytest
import torch

from tokstep.core.distribution import SUMMARY_TOP_K, entropy_bits, summarize, token_rank
from tokstep.core.model import LanguageModel
from tokstep.core.stepper import TokenStepper


@pytest.fixture(scope="module")
def batch_logits(tiny_lm: LanguageModel) -> torch.Tensor:
    """The tiny model's next-token logits after three different prompts: (3, vocab)."""
    ids = torch.tensor([[5, 17, 3, 9], [40, 2, 2, 2], [1, 60, 33, 8]])
    with torch.inference_mode():
        return tiny_lm.model(input_ids=ids).logits[:, -1]


def test_each_row_matches_its_own_computation(batch_logits: torch.Tensor) -> None:
    summaries = summarize(batch_logits)
    assert len(summaries) == batch_logits.shape[0]
    for row, summary in zip(batch_logits, summaries, strict=True):
        probs = torch.softmax(row.double(), dim=-1)  # the reference, in float64
        assert torch.allclose(summary.probs.double(), probs, atol=1e-5)  # fp32 softmax against float64
        assert summary.greedy_id == int(torch.argmax(row))
        assert summary.rank(summary.greedy_id) == token_rank(summary.probs, summary.greedy_id) == 1
        k = min(SUMMARY_TOP_K, row.shape[-1])
        assert summary.top_ids == torch.topk(probs, k).indices.tolist()
        assert summary.top_probs == pytest.approx(torch.topk(probs, k).values.tolist(), abs=1e-5)
        # The entropy of the probabilities shown (fp32), summed in float64; and of the exact softmax.
        shown = summary.probs.double()
        shown_bits = float(-(shown * shown.log()).sum() / math.log(2))
        assert summary.entropy == pytest.approx(shown_bits, abs=1e-5)
        assert entropy_bits(summary.probs) == pytest.approx(shown_bits, abs=1e-5)
        assert summary.entropy == pytest.approx(float(-(probs * probs.log()).sum() / math.log(2)), abs=1e-4)


def test_rank_of_any_token(batch_logits: torch.Tensor) -> None:
    summary = summarize(batch_logits[:1])[0]
    for token_id in (summary.top_ids[0], summary.top_ids[3], summary.top_ids[-1], int(torch.argmin(summary.probs))):
        expected = 1 + sum(1 for p in summary.probs.tolist() if p > float(summary.probs[token_id]))
        assert summary.rank(token_id) == expected == token_rank(summary.probs, token_id)


def test_entropy_ignores_tokens_that_cannot_occur() -> None:
    # A banned token (-inf logit) has probability 0 and adds nothing: two equally likely tokens are 1 bit.
    (summary,) = summarize(torch.tensor([[0.0, 0.0, float("-inf")]]))
    assert summary.entropy == pytest.approx(1.0, abs=1e-6)
    assert sorted(summary.top_ids[:2]) == [0, 1] and summary.top_probs[2] == 0.0
    # Tied for first place, both are rank 1 (no token is more likely), and greedy picks the first.
    assert summary.greedy_id == 0 and summary.rank(0) == summary.rank(1) == 1 and summary.rank(2) == 3


@pytest.mark.parametrize("k", [1, 5, SUMMARY_TOP_K, SUMMARY_TOP_K + 1, 50])
def test_a_steps_top_k_is_the_full_softmaxs_whatever_k(tiny_lm: LanguageModel, k: int) -> None:
    """Up to SUMMARY_TOP_K the step reads the summary; past it, the probabilities: the same either way."""
    stepper = TokenStepper.from_text(tiny_lm, "Once upon a time")
    probs = torch.softmax(stepper.next_token_logits().double(), dim=-1)
    reference = torch.topk(probs, k)
    step = stepper.step(k)
    assert [candidate.token_id for candidate in step.top] == reference.indices.tolist()
    assert [candidate.prob for candidate in step.top] == pytest.approx(reference.values.tolist(), abs=1e-5)
    assert step.rest_prob == pytest.approx(1 - float(reference.values.sum()), abs=1e-5)
    assert step.token_id == int(torch.argmax(probs)) and step.rank == 1
