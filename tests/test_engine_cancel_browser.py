"""In Chromium: a Stop, and a closed tab, cancel the serving engine's request in flight.

The engine is the stand-in of tests/engine_support.py, holding a request until its client goes
away; that it saw the client go is what a real vLLM server acts on (it aborts the request)."""

from __future__ import annotations

import time

import pytest
from conftest import serving, token_labels, wait_for_count
from engine_support import EngineDouble

import tokstep
from tokstep.core.loading import load_without_weights
from tokstep.runtimes.engine import EngineRuntime
from tokstep.web.api import EngineAppError
from tokstep.web.page import create_demo

pytestmark = pytest.mark.skipif("tinystories" not in tokstep.bundled_models(), reason="needs the bundled model")

HOLD_S = 15.0  # how long the engine holds a request: far past what any check below waits


def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.fixture
def engine_page(browser):
    """A page served through the stand-in engine, and that engine; the tab is the caller's to open."""
    local = load_without_weights("tinystories")
    double = EngineDouble(tokenizer=local.tokenizer, vocab_size=local.vocab_size)
    runtime = EngineRuntime(double.url, timeout_s=30, error_type=EngineAppError)
    lm = runtime.serve(local)
    context = browser.new_context(viewport={"width": 1200, "height": 1000})
    try:
        with serving(create_demo(lm, runtime=runtime)) as url:
            tab = context.new_page()
            tab.goto(url)
            tab.wait_for_selector("#tokens .token")
            yield tab, context, double
    finally:
        context.close()
        runtime.close()
        double.close()


def start_a_held_auto_run(tab, double: EngineDouble) -> int:
    """Auto-run, with the engine holding the run's third request (only that one); the tokens shown
    while it waits."""
    double.mode, double.hang_s, double.hang_after = "hang", HOLD_S, double.requests + 2
    double.hang_last = double.hang_after + 1
    tab.locator("#speed input[type=number]").fill("20")
    tab.click("#autorun")
    wait_for(lambda: double.requests > double.hang_after)  # the request is at the engine, held
    time.sleep(0.3)  # the page shows what came before it
    return len(token_labels(tab))


def test_stop_cancels_the_engine_request_and_keeps_the_tokens(engine_page):
    tab, _, double = engine_page
    shown = start_a_held_auto_run(tab, double)
    stopped_at = time.monotonic()
    tab.click("#stop")
    tab.wait_for_function("document.querySelector('#status').innerText.includes('Stopped.')", timeout=5000)
    assert time.monotonic() - stopped_at < 5  # not the engine's hold, nor the request's timeout
    wait_for(lambda: double.abandoned == 1)  # the engine saw its client go: vLLM aborts the request
    # The held request was the pass after the run's newest token, which the page had yet to show:
    # the Stop shows the sequence as it is, that token included, and no step comes after it.
    after_stop = token_labels(tab)
    assert len(after_stop) in (shown, shown + 1)
    time.sleep(1.0)
    assert token_labels(tab) == after_stop
    tab.click("#step")  # the next Step asks again
    assert wait_for_count(tab, len(after_stop) + 1)[:-1] == after_stop


def test_closing_the_tab_cancels_the_engine_request(engine_page):
    tab, context, double = engine_page
    start_a_held_auto_run(tab, double)
    tab.close()  # the tab goes; its session's heartbeat drops, and the page's unload event runs
    wait_for(lambda: double.abandoned == 1, timeout=HOLD_S / 2)
    asked = double.requests
    time.sleep(1.0)
    assert double.requests == asked  # and the run asked for nothing more
