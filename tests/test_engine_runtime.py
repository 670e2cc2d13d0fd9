"""The serving-engine runtime without a real engine: its arithmetic on the top-k, its checks at start,
and every fault a test can make a stand-in engine (tests/engine_support.py) show. A real vLLM
server is in tests/test_engine_runtime_vllm.py."""

from __future__ import annotations

import math
import threading
import time

import gradio as gr
import pytest
import torch
from engine_support import EngineDouble, free_port

import tokstep
from tokstep.core.chat import ChatSession, conversation_ids
from tokstep.core.distribution import TensorSampler, entropy_bits, logits_to_probs
from tokstep.core.loading import load_without_weights
from tokstep.core.run_loop import run_steps
from tokstep.core.sampling import SamplingSettings
from tokstep.core.stepper import RunStopped, TokenStepper
from tokstep.runtimes.engine import (
    EngineCache,
    EngineError,
    EngineRuntime,
    draw_seed,
    entropy_from_top,
    sampler_from_top,
)
from tokstep.web.api import EngineAppError, generate_updates
from tokstep.web.settings import PageSettings
from tokstep.web.views import render

pytestmark = pytest.mark.skipif("tinystories" not in tokstep.bundled_models(), reason="needs the bundled model")


@pytest.fixture(scope="module")
def local() -> tokstep.LanguageModel:
    """The bundled model's tokenizer and config, no weights: what the engine runtime loads."""
    return load_without_weights("tinystories")


@pytest.fixture
def double(local) -> EngineDouble:
    engine = EngineDouble(tokenizer=local.tokenizer, vocab_size=local.vocab_size)
    yield engine
    engine.close()


def distribution(seed: int, vocab: int = 2048, scale: float = 3.0) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.randn(vocab) * scale  # logits


# --- arithmetic ------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("k", [1, 20, 100])
def test_the_entropy_estimate_lies_between_bounds_that_hold_the_exact_value(seed, k):
    probs = logits_to_probs(distribution(seed))
    exact = entropy_bits(probs)
    top = torch.topk(probs, k).values.tolist()
    estimate, low, high = entropy_from_top(top, 2048)
    assert low - 1e-6 <= exact <= high + 1e-6
    assert low <= estimate <= high
    assert abs(estimate - exact) <= (high - low) / 2 + 1e-6


def test_the_entropy_is_exact_when_every_token_came_back():
    probs = logits_to_probs(distribution(0, vocab=50))
    estimate, low, high = entropy_from_top(probs.tolist(), 50)
    assert estimate == low == high == pytest.approx(entropy_bits(probs), abs=1e-5)


@pytest.mark.parametrize(
    "settings, exact",
    [
        (SamplingSettings(temperature=1.0), True),  # nothing filtered: the model's own distribution
        (SamplingSettings(temperature=0.7, top_k=5), True),  # only top-k tokens kept
        (SamplingSettings(temperature=1.3, top_k=20, top_p=0.8), True),
        (SamplingSettings(temperature=1.0, top_p=0.3), True),  # the nucleus closes inside the top 20
        (SamplingSettings(temperature=0.7), False),  # the tail's weight under T is unknown
        (SamplingSettings(temperature=1.0, top_k=50), False),  # 30 of the kept tokens were not returned
    ],
)
def test_the_sampler_from_the_top_tokens_is_exact_where_it_says_so(settings, exact):
    for seed in range(4):
        logits = distribution(seed, scale=2.0 if settings.top_p < 0.5 else 3.0)
        probs = logits_to_probs(logits)
        values, ids = torch.topk(probs, 20)
        top = list(zip(ids.tolist(), torch.log(values).tolist(), strict=True))
        numbers = sampler_from_top(top, 2048, settings)
        reference = TensorSampler(logits, settings)
        assert numbers.exact is exact
        worst = max(abs(numbers.probs.get(i, 0.0) - reference.prob(i)) for i in ids.tolist())
        if exact:
            assert worst < 1e-6
            assert numbers.kept == reference.kept
        else:
            assert worst < 0.1  # an estimate, labelled as one


def test_the_engine_cache_crops_as_a_kv_cache_does():
    cache = EngineCache([1, 2, 3, 4, 5])
    cache.crop(-2)
    assert cache.ids == [1, 2, 3] and cache.get_seq_length() == 3
    cache.crop(1)
    assert cache.ids == [1]


def test_the_engine_seed_depends_on_seed_and_position_and_fits_int64():
    seeds = {draw_seed(seed, position) for seed in range(20) for position in range(20)}
    assert len(seeds) == 400
    assert all(0 <= s < 2**63 for s in seeds)
    assert draw_seed(3, 7) == draw_seed(3, 7)


# --- start-up checks -------------------------------------------------------------------------------


def test_an_engine_url_that_is_not_http_is_refused_in_one_line():
    with pytest.raises(EngineError, match="must start with http:// or https://"):
        EngineRuntime("localhost:8000")


def test_an_engine_nobody_listens_on_is_refused_at_once():
    started = time.monotonic()
    with pytest.raises(EngineError, match="cannot be reached") as raised:
        tokstep.load("tinystories", engine_url=f"http://127.0.0.1:{free_port()}/v1")  # bound and let go
    assert time.monotonic() - started < 10
    assert "\n" not in str(raised.value) and "step again" not in str(raised.value)


def test_an_engine_that_serves_another_model_is_named_and_refused(local):
    engine = EngineDouble(tokenizer=local.tokenizer, vocab_size=local.vocab_size, name="gpt2")
    try:
        with pytest.raises(EngineError, match=r"does not serve the model 'tinystories' \(it serves: gpt2\)"):
            EngineRuntime(engine.url).serve(local)
    finally:
        engine.close()


def test_an_engine_with_a_larger_vocabulary_is_refused(local):
    engine = EngineDouble(tokenizer=local.tokenizer, vocab_size=local.vocab_size + 1)
    try:
        with pytest.raises(EngineError, match="takes token id 2048"):
            EngineRuntime(engine.url).serve(local)
    finally:
        engine.close()


def test_an_engine_whose_tokenizer_differs_is_refused(local, gpt2_tokenizer):
    engine = EngineDouble(tokenizer=gpt2_tokenizer, vocab_size=local.vocab_size)
    try:
        with pytest.raises(EngineError, match="reads token ids differently"):
            EngineRuntime(engine.url).serve(local)
    finally:
        engine.close()


@pytest.mark.parametrize("mode", ["garbage", "not-json", "http-500", "close"])
def test_an_engine_that_answers_nonsense_at_start_is_refused_in_one_line(local, double, mode):
    double.mode = mode
    with pytest.raises(EngineError) as raised:
        EngineRuntime(double.url, timeout_s=2).serve(local)
    message = str(raised.value)
    assert "\n" not in message and double.url in message


def test_the_engine_model_loads_without_weights_and_serves_itself(local, double):
    runtime = EngineRuntime(double.url)
    lm = runtime.load("tinystories")
    assert lm.model.device.type == "meta"  # no weights were read
    assert runtime.serve(lm) is lm
    assert lm.context_length == 256 and lm.vocab_size == 2048
    only = EngineRuntime(double.url).load()  # no name: the engine's one model
    assert only.name == "tinystories"


# --- faults mid-run --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mode, words",
    [
        ("garbage", "not a completion"),
        ("not-json", "not JSON"),
        ("http-500", "HTTP 500: the engine's worker died"),
        ("close", "closed the connection"),
        ("hang", "did not answer within 1 s"),
        ("down", "cannot be reached"),
    ],
)
def test_a_fault_mid_run_raises_one_clear_error_keeps_the_tokens_and_the_next_step_retries(double, mode, words):
    lm = EngineRuntime(double.url, timeout_s=1).load("tinystories")
    stepper = TokenStepper.from_text(lm, "Once upon a time")
    for _ in range(3):
        stepper.step()
    ids, steps = list(stepper.ids), list(stepper.steps)
    if mode == "down":
        double.stop()
    else:
        double.mode, double.hang_s = mode, 2.0
    started = time.monotonic()
    with pytest.raises(EngineError, match=words) as raised:
        stepper.step()
    assert time.monotonic() - started < 5  # bounded by the timeout, never a hang
    assert "step again to retry" in str(raised.value) and "\n" not in str(raised.value)
    assert stepper.ids == ids and stepper.steps == steps  # nothing lost, nothing half-appended
    if mode == "down":
        double.start()
    double.mode = "ok"
    stepper.step()  # the next step asks again
    assert stepper.ids[: len(ids)] == ids and len(stepper.ids) == len(ids) + 1


def test_a_stopped_run_makes_no_further_request(double):
    lm = EngineRuntime(double.url).load("tinystories")
    stepper = TokenStepper.from_text(lm, "Once upon a time")
    run = stepper.start_run()
    stepper.step(run=run)
    stepper.stop_runs()
    asked = double.requests
    with pytest.raises(RunStopped):
        stepper.step(run=run)
    stepper.end_run()
    time.sleep(0.2)
    assert double.requests == asked


def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.mark.parametrize("in_a_run", [True, False], ids=["auto-run", "one step"])
def test_a_stop_cancels_the_request_in_flight_and_keeps_the_tokens(double, in_a_run):
    lm = EngineRuntime(double.url, timeout_s=15).load("tinystories")
    stepper = TokenStepper.from_text(lm, "Once upon a time")
    stepper.step()
    ids, steps = list(stepper.ids), list(stepper.steps)
    double.mode, double.hang_s = "hang", 10.0  # the engine holds the next request
    outcome: dict = {}

    def step() -> None:
        started = time.monotonic()
        try:
            stepper.step(run=stepper.start_run() if in_a_run else None)
        except BaseException as error:  # noqa: BLE001 - the test reads what the step raised
            outcome["error"] = error
        outcome["seconds"] = time.monotonic() - started

    asked = double.requests
    thread = threading.Thread(target=step)
    thread.start()
    wait_for(lambda: double.requests > asked)  # the request is at the engine, waiting
    stopped_at = time.monotonic()
    stepper.stop_runs()  # as Stop, Undo, a pick or a closed tab do
    stop_s = time.monotonic() - stopped_at
    thread.join(5)
    assert not thread.is_alive()
    assert isinstance(outcome["error"], RunStopped)
    assert stop_s < 2 and outcome["seconds"] < 3  # not the engine's 10 s, nor the 15 s timeout
    wait_for(lambda: double.abandoned == 1)  # the engine saw its client go: vLLM aborts it then
    assert stepper.ids == ids and stepper.steps == steps
    double.mode = "ok"
    stepper.step()  # the next step asks again
    assert stepper.ids[: len(ids)] == ids and len(stepper.ids) == len(ids) + 1


def test_a_stop_cancels_a_run_s_prefetched_request(double):
    lm = EngineRuntime(double.url, timeout_s=15).load("tinystories")
    stepper = TokenStepper.from_text(lm, "Once upon a time")
    updates = run_steps(stepper, 10, 5)
    # The prompt's request answers; the next token's, sent ahead while the first is handed out, waits.
    double.mode, double.hang_s, double.hang_after = "hang", 10.0, double.requests + 1
    first = next(updates)
    wait_for(lambda: double.requests > double.hang_after)  # the prefetched request waits at the engine
    started = time.monotonic()
    stepper.stop_runs()
    assert list(updates) == [] and time.monotonic() - started < 3
    wait_for(lambda: double.abandoned == 1)
    assert stepper.generated_ids == [first.token_id]


def test_the_page_shows_an_engine_fault_in_its_status_and_keeps_every_token(double):
    lm = EngineRuntime(double.url, timeout_s=1).load("tinystories")
    stepper = TokenStepper.from_text(lm, "Once upon a time")
    stepper.step()
    render(stepper, PageSettings())  # as the page does after each step: the next distribution is read
    double.mode = "close"
    stepper.step()  # appended from the distribution it had; the view's next one fails
    view = render(stepper, PageSettings())
    assert "Serving engine" in view.status and "closed the connection" in view.status
    assert view.state is stepper and view.topk == {}
    assert len(view.token_table["data"]) == len(stepper.ids)
    double.mode = "ok"
    assert render(stepper, PageSettings()).topk  # the next view asks again and has its top-k


def test_the_web_layer_gets_engine_faults_as_gradio_errors(double):
    lm = EngineRuntime(double.url, timeout_s=1, error_type=EngineAppError).load("tinystories")
    stepper = TokenStepper.from_text(lm, "Once upon a time")
    double.mode = "http-500"
    with pytest.raises(gr.Error) as raised:
        stepper.step()
    assert raised.value.title == "Serving engine" and "HTTP 500" in raised.value.message
    assert isinstance(raised.value, EngineError)


def test_generate_turns_an_engine_fault_into_an_app_error(double):
    lm = EngineRuntime(double.url, timeout_s=1).load("tinystories")
    updates = generate_updates(lm, "Once upon a time", 10)
    first = next(updates)
    assert first["estimates"] == ["entropy"] and first["sampler"] is None
    double.mode = "garbage"
    with pytest.raises(gr.Error, match="not a completion") as raised:
        list(updates)
    assert raised.value.title == "Serving engine"


def test_an_engine_that_wants_a_key_says_so(local, double):
    double.mode = "ok"

    def refuse(handler, body, original=double._handle):
        if handler.headers.get("Authorization") != "Bearer sesame":
            return double._send(handler, 401, {"error": {"message": "Unauthorized"}})
        return original(handler, body)

    double._handle = refuse
    with pytest.raises(EngineError, match="API key"):
        EngineRuntime(double.url).serve(local)
    assert EngineRuntime(double.url, api_key="sesame").serve(local).forward is not None


def test_sampling_through_the_engine_names_its_sampler_and_repeats(double):
    lm = EngineRuntime(double.url).load("tinystories")
    settings = SamplingSettings(temperature=0.8, top_k=5, seed=4)
    stepper = TokenStepper.from_text(lm, "Once upon a time")
    steps = [stepper.step(sampling=settings) for _ in range(3)]
    assert {s.sampler for s in steps} == {"engine"} and {s.chosen_by for s in steps} == {"sampled"}
    assert all("sampling" not in s.estimates for s in steps)  # top_k 5 of the 20 returned: exact
    assert all(math.isclose(sum(s.sampling_top), 1.0, rel_tol=1e-9) for s in steps)
    stepper.undo()
    again = stepper.step(sampling=settings)
    assert again.token_id == steps[-1].token_id


@pytest.mark.skipif("tinystories-chat" not in tokstep.bundled_models(), reason="needs the bundled chat model")
def test_a_chat_turn_steps_through_the_engine_which_sees_only_the_templates_ids():
    local = load_without_weights("tinystories-chat")
    double = EngineDouble(tokenizer=local.tokenizer, vocab_size=local.vocab_size, name="tinystories-chat")
    try:
        lm = EngineRuntime(double.url).serve(local)
        session = ChatSession(lm)
        turn = session.send("Tell me a story.")
        template_ids = conversation_ids(local.tokenizer, [{"role": "user", "content": "Tell me a story."}])
        assert turn.stepper.ids == template_ids  # the template is applied here, by the local tokenizer
        steps = [turn.step() for _ in range(3)]
        assert [s.token_id for s in steps] == [double.greedy_id] * 3
        assert double.prompts[-1] == [*template_ids, *[double.greedy_id] * 2]  # ids only, as tokstep read them
        end = local.tokenizer.convert_tokens_to_ids("<|im_end|>")  # what the template writes after a reply
        assert end in turn.end_ids
        ended = turn.step(token_id=end)  # a pick outside the engine's top tokens: its rank asked for
        assert ended.rank > 20 and turn.ended_by_model and turn.over
        assert session.history()[-1]["role"] == "assistant"
    finally:
        double.close()
