"""Thirty sessions at once, each with its own prompt, each gets exactly its own tokens."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from conftest import SETTINGS
from gradio_client import Client
from test_server import generated_ids, greedy, prompt_ids

import tokstep

N_SESSIONS = 30
PROMPTS = [f"Story number {i}: the {word}" for i, word in enumerate(["cat", "dog", "ship", "tree", "king"] * 6)]


def test_thirty_concurrent_sessions_each_get_their_own_tokens(server_url, tiny_lm):
    def session(prompt: str) -> tuple[list[int], list[int], list[int], list[int]]:
        # Thirty students call from thirty addresses: /generate counts runs per address (at most 4 at
        # once, tokstep.web.client_limits). Gradio's server takes the address from X-Forwarded-For
        # when a proxy on this machine sends it (uvicorn's FORWARDED_ALLOW_IPS), as these clients do.
        address = f"198.51.100.{PROMPTS.index(prompt) + 1}"
        client = Client(server_url, verbose=False, headers={"X-Forwarded-For": address})
        client.predict(prompt, *SETTINGS, api_name="/reset")
        client.predict(prompt, *SETTINGS, api_name="/step")
        last = list(client.submit(prompt, 4, 20.0, *SETTINGS, api_name="/autorun"))[-1]
        streamed = [u["token_id"] for u in client.submit(prompt, 5, api_name="/generate")]
        return prompt_ids(last), generated_ids(last), streamed, [len(generated_ids(last))]

    with ThreadPoolExecutor(max_workers=N_SESSIONS) as pool:
        results = list(pool.map(session, PROMPTS))

    for prompt, (shown_prompt, generated, streamed, _) in zip(PROMPTS, results, strict=True):
        alone = greedy(tiny_lm, prompt, 5)
        assert shown_prompt == tokstep.tokenize(tiny_lm.tokenizer, prompt)
        assert generated == alone  # one Step and four Auto-run tokens, as if alone
        assert streamed == alone
