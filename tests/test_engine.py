"""The engine on a tiny real GPT-2: greedy stepping equals `generate`, probabilities are
the full-vocabulary softmax, the KV cache makes each step one token's forward pass."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import tokstep
from tokstep.core.stepper import TokenStepper

PROMPT = "Once upon a time, generative models"


def reference_generate(lm, prompt_ids, **kwargs) -> list[int]:
    """What transformers' own greedy search writes after the prompt."""
    input_ids = torch.tensor([prompt_ids])
    output = lm.model.generate(
        input_ids,
        attention_mask=torch.ones_like(input_ids),
        do_sample=False,
        pad_token_id=lm.tokenizer.eos_token_id,
        **kwargs,
    )
    return output[0, len(prompt_ids) :].tolist()


def full_forward_probs(lm, ids) -> torch.Tensor:
    """Softmax of the last position's logits from one uncached pass over the whole sequence."""
    with torch.inference_mode():
        logits = lm.model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1]  # (vocab,)
    return torch.softmax(logits.float(), dim=-1)


def test_greedy_steps_equal_generate_for_30_tokens(tiny_lm):
    prompt_ids = tokstep.tokenize(tiny_lm.tokenizer, PROMPT)
    steps = list(tokstep.generate_steps(tiny_lm, PROMPT, max_new_tokens=30, top_k=5))
    expected = reference_generate(tiny_lm, prompt_ids, max_new_tokens=30)
    assert [step.token_id for step in steps] == expected
    assert len(steps) == 30
    assert len(set(expected)) > 3, "the tiny model should not just repeat one token"
    assert [step.position for step in steps] == list(range(len(prompt_ids), len(prompt_ids) + 30))
    assert steps[-1].stop_reason == "max_new_tokens"
    assert all(step.stop_reason is None for step in steps[:-1])


def test_top_k_is_the_full_forward_softmax(tiny_lm):
    prompt_ids = tokstep.tokenize(tiny_lm.tokenizer, PROMPT)
    steps = list(tokstep.generate_steps(tiny_lm, PROMPT, max_new_tokens=6, top_k=7))
    ids = list(prompt_ids)
    for step in steps:
        probs = full_forward_probs(tiny_lm, ids)
        values, indices = torch.topk(probs, 7)
        assert [c.token_id for c in step.top] == indices.tolist()
        assert [c.prob for c in step.top] == pytest.approx(values.tolist(), abs=1e-5)
        assert step.prob == pytest.approx(float(probs[step.token_id]), abs=1e-5)
        assert step.rest_prob == pytest.approx(1.0 - float(values.sum()), abs=1e-5)
        assert [c.token for c in step.top] == [tiny_lm.texts.text(c.token_id) for c in step.top]
        assert step.token_id == step.top[0].token_id  # greedy picks the most likely
        ids.append(step.token_id)


def test_probabilities_are_not_renormalised_over_the_top_k(tiny_lm):
    step = next(tokstep.generate_steps(tiny_lm, PROMPT, max_new_tokens=1, top_k=3))
    shown = sum(c.prob for c in step.top)
    assert shown < 1.0
    assert shown + step.rest_prob == pytest.approx(1.0, abs=1e-6)


def test_each_step_feeds_one_token_through_the_kv_cache(tiny_lm):
    prompt_ids = tokstep.tokenize(tiny_lm.tokenizer, PROMPT)
    fed: list[int] = []
    hook = tiny_lm.model.transformer.wte.register_forward_hook(lambda _m, args, _out: fed.append(args[0].shape[1]))
    try:
        list(tokstep.generate_steps(tiny_lm, PROMPT, max_new_tokens=10))
    finally:
        hook.remove()
    # The prompt once, then one token per step; the tenth token needs no pass after it.
    assert fed == [len(prompt_ids)] + [1] * 9


def test_appends_ids_without_retokenizing(tiny_lm):
    tokenizer = tiny_lm.tokenizer
    # " a" then "b": decoding gives " ab", which re-tokenizes differently (one token).
    a_id, b_id = tokenizer.convert_tokens_to_ids(["Ġa", "b"])
    assert tokstep.tokenize(tokenizer, " ab") != [a_id, b_id]
    stepper = TokenStepper.from_text(tiny_lm, "Hello")
    stepper.step(token_id=a_id)
    stepper.step(token_id=b_id)
    next_step = stepper.step()
    assert stepper.ids[:-1] == tokstep.tokenize(tokenizer, "Hello") + [a_id, b_id]
    assert next_step.token_id == int(torch.argmax(full_forward_probs(tiny_lm, stepper.ids[:-1])))
    assert stepper.text() == "Hello ab" + tiny_lm.texts.text(next_step.token_id)


def test_stops_at_end_of_text_like_generate(tiny_lm):
    prompt_ids = tokstep.tokenize(tiny_lm.tokenizer, PROMPT)
    free_run = reference_generate(tiny_lm, prompt_ids, max_new_tokens=12)
    # Make the fourth greedy token the end-of-text token of this model.
    eos = free_run[3]
    assert eos not in free_run[:3]
    lm = dataclasses.replace(tiny_lm, eos_token_ids=frozenset({eos}))
    steps = list(tokstep.generate_steps(lm, PROMPT, max_new_tokens=12))
    assert [s.token_id for s in steps] == reference_generate(tiny_lm, prompt_ids, max_new_tokens=12, eos_token_id=eos)
    assert len(steps) == 4
    assert steps[-1].stop_reason == "end_of_text"


def test_stops_when_the_context_is_full(tiny_lm):
    limit = tiny_lm.context_length
    prompt_ids = [464] * (limit - 3)
    steps = list(tokstep.generate_steps(tiny_lm, prompt_ids, max_new_tokens=10))
    assert len(steps) == 3
    assert steps[-1].stop_reason == "context_full"
    assert steps[-1].position == limit - 1
    assert [s.token_id for s in steps] == reference_generate(tiny_lm, prompt_ids, max_new_tokens=3)


def test_a_prompt_that_fills_the_context_is_refused_with_numbers(tiny_lm):
    limit = tiny_lm.context_length
    with pytest.raises(tokstep.PromptError, match=rf"is {limit + 5} tokens.*at most {limit} tokens"):
        tokstep.generate_steps(tiny_lm, [464] * (limit + 5))
    with pytest.raises(tokstep.PromptError, match=f"at most {limit - 1} tokens"):
        tokstep.generate_steps(tiny_lm, [464] * limit)


@pytest.mark.parametrize("prompt", ["", "   ", "\n\t"])
def test_empty_prompts_are_refused(tiny_lm, prompt):
    with pytest.raises(tokstep.PromptError, match="empty"):
        tokstep.generate_steps(tiny_lm, prompt)


@pytest.mark.parametrize("bad", [-1, 2.5, "3", None, True])
def test_bad_max_new_tokens_is_refused_at_the_call(tiny_lm, bad):
    with pytest.raises(ValueError, match="max_new_tokens"):
        tokstep.generate_steps(tiny_lm, PROMPT, max_new_tokens=bad)


def test_zero_new_tokens_yields_nothing(tiny_lm):
    assert list(tokstep.generate_steps(tiny_lm, PROMPT, max_new_tokens=0)) == []


@pytest.mark.parametrize("bad", [0, -3, 10**9])
def test_bad_top_k_is_refused(tiny_lm, bad):
    with pytest.raises(ValueError, match="top_k"):
        tokstep.generate_steps(tiny_lm, PROMPT, top_k=bad)


def test_generated_text_joins_bytes_split_across_tokens(tiny_lm):
    emoji_ids = tokstep.tokenize(tiny_lm.tokenizer, " 😀")
    assert len(emoji_ids) == 2
    stepper = TokenStepper.from_text(tiny_lm, "Look:")
    shown = [stepper.step(token_id=i).token for i in emoji_ids]
    assert shown == [" \\xf0\\x9f\\x98", "\\x80"]
    assert stepper.text() == "Look: 😀"


def entropy_in_bits(probs: torch.Tensor) -> float:
    nonzero = probs[probs > 0].double()
    return float(-(nonzero * torch.log2(nonzero)).sum())


def test_each_step_says_how_its_token_was_chosen(tiny_lm):
    stepper = TokenStepper.from_text(tiny_lm, PROMPT)
    greedy = stepper.step()
    probs = full_forward_probs(tiny_lm, stepper.ids)
    fifth = int(torch.topk(probs, 5).indices[4])
    chosen = stepper.step(token_id=fifth)
    assert (greedy.chosen_by, greedy.rank) == ("greedy", 1)
    assert (chosen.chosen_by, chosen.rank) == ("user", 5)
    assert chosen.entropy == pytest.approx(entropy_in_bits(probs), abs=1e-4)
    assert 0 < chosen.entropy < torch.log2(torch.tensor(float(tiny_lm.vocab_size)))
    assert greedy.sampling is greedy.sampling_top is greedy.sampling_prob is None
    assert all(step.elapsed_ms > 0 for step in (greedy, chosen))
    assert stepper.steps == [greedy, chosen]


def test_rank_of_a_rare_token(tiny_lm):
    stepper = TokenStepper.from_text(tiny_lm, PROMPT)
    probs = full_forward_probs(tiny_lm, stepper.ids)
    rarest = int(torch.argmin(probs))
    step = stepper.step(token_id=rarest)
    assert step.rank == int((probs > probs[rarest]).sum()) + 1 > 40_000
    assert tokstep.rank_bucket(step.rank) == "beyond"


def test_the_stepper_keeps_the_steps_generate_steps_yields(tiny_lm):
    yielded = list(tokstep.generate_steps(tiny_lm, PROMPT, max_new_tokens=4))
    stepper = TokenStepper.from_text(tiny_lm, PROMPT)
    stepped = [stepper.step() for _ in range(4)]
    assert [dataclasses.replace(s, stop_reason=None) for s in yielded] == stepped == stepper.steps
    assert [s.chosen_by for s in yielded] == ["greedy"] * 4
    # Steps built by hand, as before these fields existed, still work.
    assert tokstep.Step(1, "x", 0.5, [], 0.5, 3).chosen_by == "greedy"


@pytest.mark.parametrize(
    ("rank", "bucket"),
    [(1, "top 1"), (2, "top 10"), (10, "top 10"), (11, "top 100"), (100, "top 100"), (101, "beyond")],
)
def test_rank_buckets(rank, bucket):
    assert tokstep.rank_bucket(rank) == bucket


@pytest.mark.parametrize("bad", [0, -1, 1.0, None, True])
def test_rank_bucket_refuses_what_is_not_a_rank(bad):
    with pytest.raises(ValueError, match="rank"):
        tokstep.rank_bucket(bad)


def test_score_prompt_matches_a_direct_computation(tiny_lm):
    ids = tokstep.tokenize(tiny_lm.tokenizer, PROMPT + " can write stories")
    scores = tokstep.score_prompt(tiny_lm, ids)
    assert [s.token_id for s in scores] == ids
    assert [s.position for s in scores] == list(range(len(ids)))
    assert [s.token for s in scores] == [tiny_lm.texts.text(i) for i in ids]
    assert scores[0].prob is None and scores[0].rank is None
    for i in range(1, len(ids)):
        probs = full_forward_probs(tiny_lm, ids[:i])  # the model's guess after ids[:i]
        assert scores[i].prob == pytest.approx(float(probs[ids[i]]), abs=1e-6)
        assert scores[i].rank == int((probs > probs[ids[i]]).sum()) + 1
    assert len({s.rank for s in scores[1:]}) > 1


def test_score_prompt_of_greedy_text_ranks_every_token_first(tiny_lm):
    stepper = TokenStepper.from_text(tiny_lm, PROMPT)
    for _ in range(6):
        stepper.step()
    scores = tokstep.score_prompt(tiny_lm, stepper.ids)
    assert [s.rank for s in scores[stepper.prompt_length :]] == [1] * 6
    assert [s.prob for s in scores[stepper.prompt_length :]] == pytest.approx([s.prob for s in stepper.steps], abs=1e-5)


def test_score_prompt_edges(tiny_lm):
    assert tokstep.score_prompt(tiny_lm, []) == []
    assert tokstep.score_prompt(tiny_lm, [464]) == [tokstep.TokenScore(0, 464, tiny_lm.texts.text(464), None, None)]
    limit = tiny_lm.context_length
    assert len(tokstep.score_prompt(tiny_lm, [464] * limit)) == limit
    with pytest.raises(tokstep.PromptError, match=f"at most {limit} tokens"):
        tokstep.score_prompt(tiny_lm, [464] * (limit + 1))
