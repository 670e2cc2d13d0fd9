"""The seed notebook's numbers with the real GPT-2 weights, when they are in the local cache."""

from __future__ import annotations

import huggingface_hub
import pytest

import tokstep

# The notebook's table for "Once upon a time, generative models" (GPT-2, top 5).
NOTEBOOK_TOP5 = [
    (286, " of", 0.194091),
    (547, " were", 0.179078),
    (389, " are", 0.052251),
    (550, " had", 0.031235),
    (423, " have", 0.031007),
]


def gpt2_weights_cached() -> bool:
    for filename in ("model.safetensors", "pytorch_model.bin"):
        if isinstance(huggingface_hub.try_to_load_from_cache("gpt2", filename), str):
            return True
    return False


@pytest.mark.skipif(not gpt2_weights_cached(), reason="the real gpt2 weights are not in the local Hugging Face cache")
def test_real_gpt2_reproduces_the_notebook_table():
    lm = tokstep.load("gpt2")
    step = next(tokstep.generate_steps(lm, "Once upon a time, generative models", max_new_tokens=1, top_k=5))
    assert [(c.token_id, c.token) for c in step.top] == [(i, t) for i, t, _ in NOTEBOOK_TOP5]
    assert [c.prob for c in step.top] == pytest.approx([p for _, _, p in NOTEBOOK_TOP5], abs=1e-4)
    assert step.token == " of"
