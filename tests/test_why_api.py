"""The "Why this token?" views outside the page: read along a run (tokstep.core.why.WhyReader), in
/generate's updates and the plain route when asked (`layers`, `attention`), and in run files
(`export_run(..., layers=True, attention=True)`, the page's "Export + Why (JSON)").

Against real tiny models and a real launched server: each update's lens is the reading of a fresh pass
over the sequence the token was chosen after, its last row that update's own `top`; attention rows sum
to 1; the fields are absent unless asked for and every other field is what a call without them gives;
a view that cannot be given (a serving engine, ZeroGPU, attention on Mamba) refuses the call before its
first token, saying why; such a run counts several times against its caller's tokens a minute. Expected values
come from the models, never from stored numbers.
"""

from __future__ import annotations

import json

import gradio as gr
import httpx
import pytest
import torch
from conftest import SETTINGS, serving
from gradio_client import Client
from gradio_client.exceptions import AppError
from test_stream_route import stream

import tokstep
from tokstep.core import run_files
from tokstep.core.forward import ModelNotHere
from tokstep.core.run_files import dumps_run, export_run, parse_run, restore_run, steps_with_views
from tokstep.core.stepper import TokenStepper
from tokstep.core.why import WhyReader, why_this_token
from tokstep.runtimes.in_process import InProcessRuntime
from tokstep.runtimes.zerogpu import ZeroGPURuntime
from tokstep.testing_models import tiny_causal_lm, tokenizer
from tokstep.web.api import API_TOP_K, WHY_TOKEN_COST, generate_updates
from tokstep.web.client_limits import FairShare
from tokstep.web.page import create_demo

PROMPT = "Once upon a time there was"
ATOL = 1e-5  # a reading against a fresh pass's: the same arithmetic in another order
VIEW_FIELDS = {"layers", "attention"}


def prompt_ids() -> list[int]:
    return tokenizer()(PROMPT)["input_ids"]


def positions_embedded(model: torch.nn.Module) -> tuple[list[int], torch.utils.hooks.RemovableHandle]:
    """A list that each pass of `model` appends its number of new positions to, and the hook's handle."""
    counts: list[int] = []
    handle = model.get_input_embeddings().register_forward_hook(lambda m, args, out: counts.append(args[0].shape[-1]))
    return counts, handle


def assert_same_reading(read, fresh) -> None:
    assert (read.lens is None) == (fresh.lens is None)
    if read.lens is not None:
        assert read.lens.layers == fresh.lens.layers
        assert torch.allclose(read.lens.probs, fresh.lens.probs, rtol=0, atol=ATOL)
    assert (read.attention is None) == (fresh.attention is None)
    if read.attention is not None:
        assert read.attention.layers == fresh.attention.layers
        assert torch.allclose(read.attention.weights, fresh.attention.weights, rtol=0, atol=ATOL)


# The plain GPT-2, a sliding window (mistral), attention sinks (gpt_oss), a model that returns no cache
# (recurrent_gemma: every reading reads the whole sequence) and one without attention (mamba).
@pytest.mark.parametrize("arch", ["gpt2", "mistral", "gpt_oss", "recurrent_gemma", "mamba"])
def test_a_reader_along_a_run_reads_what_a_fresh_pass_reads_one_token_a_step(arch):
    lm = tiny_causal_lm(arch)
    stepper = TokenStepper(lm, prompt_ids())
    reader = WhyReader(lm, top_k=5)
    counts, handle = positions_embedded(lm.model)
    try:
        for index in range(6):
            before = len(counts)
            read = reader.read(stepper.ids)
            fed = sum(counts[before:])
            if arch == "recurrent_gemma":  # no cache comes back: after the first, one pass over it all
                assert fed == len(stepper.ids) if index else fed >= len(stepper.ids)
            elif index:
                assert fed == 1  # only the token added since the last reading
            else:
                assert fed == len(stepper.ids)  # the first reading: all of it
            fresh = why_this_token(lm, stepper.ids, top_k=5)
            assert_same_reading(read, fresh)
            assert torch.allclose(read.lens.probs[-1], stepper.next_token_probs(), rtol=0, atol=ATOL)
            if index == 2:
                stepper.step(token_id=stepper.next_top(3)[0][2].token_id)  # a pick
            else:
                stepper.step()
        stepper.undo()
        stepper.undo()  # back two tokens: the reader's cache no longer fits, and it starts over
        before = len(counts)
        read = reader.read(stepper.ids)
        assert sum(counts[before:]) == len(stepper.ids)
        assert_same_reading(read, why_this_token(lm, stepper.ids, top_k=5))
    finally:
        handle.remove()


@pytest.fixture(scope="module")
def client(server_url) -> Client:
    return Client(server_url, verbose=False)


def test_generate_gives_each_tokens_layers_and_attention_when_asked_and_nothing_else_changes(client, tiny_lm):
    tokens = 6
    plain = list(client.submit(PROMPT, tokens, api_name="/generate"))
    updates = list(client.submit(PROMPT, tokens, layers=True, attention=True, api_name="/generate"))
    assert not VIEW_FIELDS & set(plain[0])  # not asked for: not there
    assert [{k: v for k, v in u.items() if k not in VIEW_FIELDS} for u in updates] == plain
    ids = prompt_ids()
    layers = tiny_lm.model.config.num_hidden_layers
    for update in updates:
        before = ids[: update["position"]]  # the sequence the token was chosen after
        fresh = why_this_token(tiny_lm, before, top_k=API_TOP_K)
        rows = update["layers"]
        assert [row["layer"] for row in rows] == ["embeddings", *(f"layer {i}" for i in range(1, layers + 1))]
        for row, expected in zip(rows, fresh.lens.top, strict=True):
            assert [c[0] for c in row["top"]] == [c.token_id for c in expected]
            assert [c[1] for c in row["top"]] == [tiny_lm.texts.text(c.token_id) for c in expected]
            assert [c[2] for c in row["top"]] == pytest.approx([c.prob for c in expected], abs=ATOL)
        # The last row is the model's output: the update's own top candidates.
        assert [c[0] for c in rows[-1]["top"]] == [c[0] for c in update["top"]]
        assert [c[2] for c in rows[-1]["top"]] == pytest.approx([c[2] for c in update["top"]], abs=ATOL)
        where = update["attention"]
        assert where["tokens"] == [[i, tiny_lm.texts.text(i)] for i in before]
        assert [layer["layer"] for layer in where["layers"]] == [f"layer {i}" for i in range(1, layers + 1)]
        for layer, expected in zip(where["layers"], fresh.attention.weights, strict=True):
            assert len(layer["weights"]) == len(before)
            assert sum(layer["weights"]) + layer["elsewhere"] == pytest.approx(1.0, abs=ATOL)
            assert layer["weights"] == pytest.approx(expected.tolist(), abs=ATOL)
        mean = torch.tensor([layer["weights"] for layer in where["layers"]]).mean(dim=0)
        assert where["average"] == pytest.approx(mean.tolist(), abs=1e-6)
        ids = [*before, update["token_id"]]


def test_each_view_alone_and_the_plain_route_and_rest_carry_the_same_fields(client, server_url):
    only_layers = list(client.submit(PROMPT, 3, layers=True, api_name="/generate"))
    assert all("layers" in u and "attention" not in u for u in only_layers)
    only_attention = list(client.submit(PROMPT, 3, attention=True, api_name="/generate"))
    assert all("attention" in u and "layers" not in u for u in only_attention)
    # The plain route takes them by name and streams the same updates.
    body = {"prompt": PROMPT, "max_new_tokens": 3, "layers": True, "attention": True}
    updates, events = stream(server_url, body)
    both = list(client.submit(PROMPT, 3, layers=True, attention=True, api_name="/generate"))
    assert json.loads(json.dumps(both)) == updates and events == [("done", {"stop_reason": "max_new_tokens"})]
    # Gradio's REST route by name, as curl calls it.
    base = server_url.rstrip("/")
    posted = httpx.post(f"{base}/gradio_api/call/v2/generate", json={"prompt": PROMPT, "max_new_tokens": 1,
                                                                        "layers": True}, timeout=30)  # fmt: skip
    answer = httpx.get(f"{base}/gradio_api/call/generate/{posted.json()['event_id']}", timeout=60).text
    data = json.loads(answer.split("event: complete\ndata: ", 1)[1].splitlines()[0])
    assert data[0]["layers"] == only_layers[0]["layers"]


def test_a_bad_flag_is_refused_saying_what_it_must_be(client, server_url):
    with pytest.raises(AppError, match="layers must be true or false, got 'yes'"):
        client.predict(PROMPT, 2, layers="yes", api_name="/generate")
    response = httpx.post(server_url.rstrip("/") + "/stream/generate",
                          json={"prompt": PROMPT, "attention": 1}, timeout=30)  # fmt: skip
    assert response.status_code == 400
    assert response.json()["error"] == "Bad setting: attention must be true or false, got 1."


def test_attention_on_a_model_without_any_is_refused_before_the_first_token_and_layers_work():
    mamba = tiny_causal_lm("mamba")
    with serving(create_demo(mamba)) as url:
        response = httpx.post(url.rstrip("/") + "/stream/generate",
                              json={"prompt": PROMPT, "max_new_tokens": 2, "attention": True}, timeout=60)  # fmt: skip
        assert response.status_code == 400
        assert response.json() == {
            "title": "Not available",
            "error": "Not available: Where it looked is not available for this model: its passes return no "
            "attention weights (a state-space model such as Mamba has no attention layers). Call again "
            "without attention.",
        }
        updates, _ = stream(url, {"prompt": PROMPT, "max_new_tokens": 2, "layers": True})
    assert len(updates) == 2 and all(len(u["layers"]) == mamba.model.config.num_hidden_layers + 1 for u in updates)


def test_off_process_runtimes_refuse_the_views_before_any_pass(tiny_lm):
    from engine_support import EngineDouble

    from tokstep.core.loading import load_without_weights
    from tokstep.runtimes.engine import EngineRuntime

    zero = ZeroGPURuntime().serve(tiny_lm)
    with pytest.raises(gr.Error, match="needs the model's own layers in this process.*ZeroGPU.*without layers"):
        next(generate_updates(zero, PROMPT, 3, layers=True))
    assert [u["token_id"] for u in generate_updates(zero, PROMPT, 3)] == [
        s.token_id for s in tokstep.generate_steps(tiny_lm, PROMPT, 3)
    ]  # without the views the runtime writes as before
    stepper = TokenStepper.from_text(zero, PROMPT)
    stepper.step()
    with pytest.raises(ModelNotHere, match="ZeroGPU"):
        export_run(stepper, layers=True)
    if "tinystories" not in tokstep.bundled_models():
        pytest.skip("the engine runtime's part needs the bundled model's tokenizer")
    local = load_without_weights("tinystories")
    double = EngineDouble(tokenizer=local.tokenizer, vocab_size=local.vocab_size)
    try:
        lm = EngineRuntime(double.url).load("tinystories")
        asked = double.requests
        with pytest.raises(gr.Error, match="serving engine.*without attention") as raised:
            next(generate_updates(lm, PROMPT, 3, attention=True))
        assert raised.value.title == "Not available"
        assert double.requests == asked  # refused before anything was sent
    finally:
        double.close()


def test_a_run_with_the_views_counts_each_token_several_times_against_the_budget(tiny_lm):
    rate = 30
    runtime = InProcessRuntime()
    with serving(create_demo(tiny_lm, runtime=runtime, fair_share=FairShare(tokens_per_minute=rate))) as url:
        client = Client(url, verbose=False)
        tokens = rate // WHY_TOKEN_COST + 1  # fits the budget once, not at its cost
        with pytest.raises(AppError, match=f"asks for up to {tokens * WHY_TOKEN_COST} tokens, more than a client"):
            client.predict(PROMPT, tokens, layers=True, api_name="/generate")
        assert len(list(client.submit(PROMPT, tokens, api_name="/generate"))) == tokens


def test_run_files_carry_the_views_per_step_and_load_as_without_them(tiny_lm, served_lm):
    stepper = TokenStepper.from_text(served_lm, PROMPT)
    stepper.step()
    stepper.step(token_id=stepper.next_top(4)[0][3].token_id)
    stepper.step()
    run = export_run(stepper, 5, layers=True, attention=True)
    plain = export_run(stepper, 5)
    assert [{k: v for k, v in s.items() if k not in VIEW_FIELDS} for s in run["steps"]] == plain["steps"]
    for step in run["steps"]:  # the same records as /generate's, for the sequence before each token
        before = stepper.ids[: step["position"]]
        fresh = why_this_token(tiny_lm, before)
        assert [[c[0] for c in row["top"]] for row in step["layers"]] == [
            [c.token_id for c in row] for row in fresh.lens.top
        ]
        assert [c[0] for c in step["layers"][-1]["top"]] == [c[0] for c in step["top"]]
        for layer in step["attention"]["layers"]:
            assert sum(layer["weights"]) == pytest.approx(1.0, abs=ATOL)
    restored = restore_run(tiny_lm, parse_run(dumps_run(run)))
    assert restored.stepper.ids == stepper.ids and restored.warnings == []
    assert export_run(restored.stepper, 5) == plain  # the views are read again, never from the file


def test_the_page_exports_the_views_with_its_second_button(client, tiny_lm):
    client.predict(PROMPT, *SETTINGS, api_name="/reset")
    for _ in range(2):
        client.predict(PROMPT, *SETTINGS, api_name="/step")
    with open(client.predict(PROMPT, *SETTINGS, api_name="/export_why"), encoding="utf-8") as file:
        run = json.load(file)
    with open(client.predict(PROMPT, *SETTINGS, api_name="/export"), encoding="utf-8") as file:
        plain = json.load(file)
    assert not any(VIEW_FIELDS & set(step) for step in plain["steps"])
    assert len(run["steps"]) == 2
    for step in run["steps"]:
        assert len(step["layers"]) == tiny_lm.model.config.num_hidden_layers + 1
        assert len(step["attention"]["tokens"]) == step["position"]


def test_a_long_run_keeps_the_views_of_its_last_tokens_that_fit_the_file(tiny_lm, monkeypatch):
    stepper = TokenStepper.from_text(tiny_lm, PROMPT)
    for _ in range(8):
        stepper.step()
    whole = dumps_run(export_run(stepper, 5, layers=True, attention=True))
    plain = dumps_run(export_run(stepper, 5))
    # A reader's limit halfway between the file without views and with all of them.
    limit = (len(plain.encode()) + len(whole.encode())) // 2
    monkeypatch.setattr(run_files, "MAX_RUN_BYTES", limit)
    run = export_run(stepper, 5, layers=True, attention=True)
    kept = steps_with_views(run)
    assert 0 < kept < len(stepper.steps)
    has_views = [bool(VIEW_FIELDS & set(step)) for step in run["steps"]]
    assert has_views == [False] * (len(has_views) - kept) + [True] * kept  # the last tokens' views
    assert len(dumps_run(run).encode()) <= limit
    assert restore_run(tiny_lm, parse_run(dumps_run(run))).stepper.ids == stepper.ids  # and it loads
