"""End-to-end on the bundled offline model: the engine agrees with `generate`, and the page
and API on a real server write what the engine writes."""

from __future__ import annotations

import torch
from conftest import SETTINGS
from gradio_client import Client
from test_server import generated_ids

import tokstep

PROMPT = "Once upon a time"


def test_bundled_model_greedy_steps_equal_generate(bundled_lm):
    ids = tokstep.tokenize(bundled_lm.tokenizer, PROMPT)
    steps = list(tokstep.generate_steps(bundled_lm, PROMPT, max_new_tokens=30))
    input_ids = torch.tensor([ids])
    reference = bundled_lm.model.generate(
        input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False, max_new_tokens=30
    )[0, len(ids) :].tolist()
    assert [s.token_id for s in steps] == reference


def test_bundled_model_on_a_real_server(bundled_server_url, bundled_lm):
    client = Client(bundled_server_url, verbose=False)
    expected = [s.token_id for s in tokstep.generate_steps(bundled_lm, PROMPT, max_new_tokens=12)]
    updates = list(client.submit(PROMPT, 12, api_name="/generate"))
    assert [u["token_id"] for u in updates] == expected
    client.predict(PROMPT, *SETTINGS, api_name="/reset")
    last = list(client.submit(PROMPT, 5, 20.0, *SETTINGS, api_name="/autorun"))[-1]
    assert generated_ids(last) == expected[:5]
    # A story model continues a story in words: most of what it wrote is letters and spaces.
    text = updates[-1]["text"][len(PROMPT) :]
    assert sum(ch.isalpha() or ch.isspace() for ch in text) / len(text) > 0.8
