"""The plain server-sent events route, `POST /stream/generate`, on a real server: the same tokens and
numbers as /generate, a clear HTTP error for a bad call, and a client that goes away ends its run."""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch
from conftest import serving
from gradio_client import Client
from test_stop_and_disconnect import counting_forward_passes, passes_after

from tokstep.runtimes.in_process import InProcessRuntime
from tokstep.web.page import ServerLimits, create_demo
from tokstep.web.stream_route import PATH, streams_running

PROMPT = "Once upon a time"
ROOT = Path(__file__).resolve().parents[1]


def stream(server_url: str, body: dict) -> tuple[list[dict], list[tuple[str, dict]]]:
    """The call's token updates, and its other events (name, data) in order."""
    updates, events = [], []
    with httpx.stream("POST", server_url.rstrip("/") + PATH, json=body, timeout=60) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        event = None
        for line in response.iter_lines():
            if line.startswith("event:"):
                event = line.removeprefix("event:").strip()
            elif line.startswith("data:"):
                data = json.loads(line.removeprefix("data:"))
                (updates.append(data) if event is None else events.append((event, data)))
                event = None
    return updates, events


def test_greedy_tokens_are_the_models_own_generate(server_url, tiny_lm):
    updates, events = stream(server_url, {"prompt": PROMPT, "max_new_tokens": 12})
    ids = torch.tensor([tiny_lm.tokenizer.encode(PROMPT)])
    with torch.inference_mode():
        expected = tiny_lm.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False)
    assert [u["token_id"] for u in updates] == expected[0, ids.shape[1] :].tolist()
    assert events == [("done", {"stop_reason": "max_new_tokens"})]
    assert updates[-1]["stop_reason"] == "max_new_tokens"


def test_each_update_is_what_generate_streams(server_url):
    arguments = {"prompt": PROMPT, "max_new_tokens": 6, "sample": True, "temperature": 0.8, "top_k": 40, "seed": 7}
    updates, _ = stream(server_url, arguments)
    client = Client(server_url, verbose=False)
    expected = list(client.submit(**arguments, api_name="/generate"))
    assert updates == expected  # every field, seeded draws included
    assert sum(p for _, _, p in updates[0]["top"]) + updates[0]["rest_prob"] == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"prompt": PROMPT, "max_new_tokens": "lots"}, "max_new_tokens must be a whole number"),
        ({"prompt": PROMPT, "temperature": -1, "sample": True}, "temperature"),
        ({"prompt": ""}, "The prompt is empty"),
        ({"max_new_tokens": 3}, "prompt: field required"),
        ({"prompt": PROMPT, "tokens": 3}, "tokens: unknown argument"),
        ({"prompt": PROMPT, "model": "no-such-model"}, "no-such-model"),
    ],
)
def test_a_bad_call_is_an_http_error_that_says_what_is_wrong(server_url, body, words):
    response = httpx.post(server_url.rstrip("/") + PATH, json=body, timeout=30)
    assert response.status_code == 400
    answer = response.json()
    assert words in answer["error"] and answer["title"]


@pytest.mark.parametrize("content", [b"not json", b"[1, 2]"])
def test_a_body_that_is_not_a_json_object_is_refused_with_what_to_send(server_url, content):
    response = httpx.post(server_url.rstrip("/") + PATH, content=content, timeout=30)
    assert response.status_code == 400 and '{"prompt": "..."' in response.json()["error"]


def test_a_client_that_goes_away_ends_its_run(server_url, tiny_lm):
    with counting_forward_passes(tiny_lm) as counter:
        with httpx.stream(
            "POST", server_url.rstrip("/") + PATH, json={"prompt": PROMPT, "max_new_tokens": 60}, timeout=60
        ) as response:
            tokens = (line for line in response.iter_lines() if line.startswith("data:"))
            for n, _ in enumerate(tokens):
                if n == 2:
                    break  # leaving the block closes the connection
        time.sleep(0.5)  # the server notices; the update being made may still take its pass
        assert passes_after(counter, 1.0) == 0


def test_the_readme_curl_line_streams_what_the_readme_shows(bundled_server_url):
    section = (ROOT / "README.md").read_text(encoding="utf-8").split("### The plain streaming route\n", 1)[1]
    section = section.split("\n## ", 1)[0]
    body = json.loads(re.search(r"curl -sN http://127\.0\.0\.1:7860/stream/generate .*?-d '([^']+)'", section, re.S)[1])
    shown = [
        json.loads(line + "}")
        for line in re.findall(r'^data: (\{"text":"[^"]*","token_id":\d+,"token":"[^"]*")', section, re.M)
    ]
    updates, events = stream(bundled_server_url, body)
    assert len(shown) == len(updates) == body["max_new_tokens"]
    assert [{k: u[k] for k in ("text", "token_id", "token")} for u in updates] == shown
    assert events == [("done", {"stop_reason": "max_new_tokens"})]


def test_past_its_streams_at_once_the_route_answers_503_with_when_to_retry(tiny_lm):
    runtime = InProcessRuntime()
    lm = runtime.serve(tiny_lm)
    demo = create_demo(lm, runtime=runtime, limits=ServerLimits(stream_workers=1))
    with serving(demo) as url:
        route = url.rstrip("/") + PATH
        with ThreadPoolExecutor(1) as pool:
            with runtime.forward_lock:  # no pass runs: the first stream holds its slot, waiting
                first = pool.submit(stream, url, {"prompt": PROMPT, "max_new_tokens": 3})
                deadline = time.monotonic() + 20
                while streams_running(demo) < 1:
                    assert time.monotonic() < deadline, "the first stream never started"
                    time.sleep(0.02)
                busy = httpx.post(route, json={"prompt": PROMPT}, timeout=30)
            assert busy.status_code == 503
            assert "at most 1 runs at once" in busy.json()["error"] and busy.headers["Retry-After"] == "5"
            assert len(first.result(timeout=30)[0]) == 3
        updates, _ = stream(url, {"prompt": PROMPT, "max_new_tokens": 2})  # the slot came back
        assert len(updates) == 2
