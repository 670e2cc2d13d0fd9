"""Stop, a closed tab and a dropped client end a run within one step; other sessions go on."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from contextlib import contextmanager

from conftest import SETTINGS, wait_for_count
from gradio_client import Client
from test_server import generated_ids, greedy

import tokstep
from tokstep.core.stepper import TokenStepper
from tokstep.web.page_handlers import autorun
from tokstep.web.settings import PageSettings

PROMPT = "Once upon a time"
SPEED = 5.0  # tokens per second: one step every 0.2 s


@contextmanager
def counting_forward_passes(lm):
    """Count the model's forward passes (every session's) while the block runs."""
    counter = {"passes": 0}
    lock = threading.Lock()

    def count(*_):
        with lock:
            counter["passes"] += 1

    hook = lm.model.register_forward_hook(count)
    try:
        yield counter
    finally:
        hook.remove()


def passes_after(counter, seconds: float) -> int:
    before = counter["passes"]
    time.sleep(seconds)
    return counter["passes"] - before


def wait_until(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_stop_ends_the_run_within_one_step(server_url, tiny_lm):
    client = Client(server_url, verbose=False)
    client.predict(PROMPT, *SETTINGS, api_name="/reset")
    with counting_forward_passes(tiny_lm) as counter:
        job = client.submit(PROMPT, 100, SPEED, *SETTINGS, api_name="/autorun")
        wait_until(lambda: len(job.outputs()) >= 2)
        job.cancel()
        wait_until(job.done, timeout=5)
        # At most the step in flight when Stop came; then nothing for several paces.
        assert passes_after(counter, 0.3) <= 1
        assert passes_after(counter, 1.0) == 0


def test_stopping_one_session_leaves_another_running(server_url, tiny_lm):
    alice, bob = Client(server_url, verbose=False), Client(server_url, verbose=False)
    alice.predict(PROMPT, *SETTINGS, api_name="/reset")
    bob.predict("The dog", *SETTINGS, api_name="/reset")
    alice_job = alice.submit(PROMPT, 12, 10.0, *SETTINGS, api_name="/autorun")
    bob_job = bob.submit("The dog", 12, 10.0, *SETTINGS, api_name="/autorun")
    wait_until(lambda: len(alice_job.outputs()) >= 2)
    alice_job.cancel()
    bob_updates = list(bob_job)
    assert [generated_ids(view) for view in bob_updates] == [greedy(tiny_lm, "The dog", n) for n in range(1, 13)]
    assert len(generated_ids(alice_job.outputs()[-1])) < 12


def test_closing_the_tab_ends_the_run(browser, server_url, tiny_lm):
    context = browser.new_context()
    page = context.new_page()
    page.goto(server_url)
    page.wait_for_selector("#tokens .token")
    n_prompt = page.locator("#tokens .token").count()
    with counting_forward_passes(tiny_lm) as counter:
        page.click("#autorun")  # default: 20 tokens at 3 per second
        wait_for_count(page, n_prompt + 2)
        context.close()
        time.sleep(0.6)  # the server notices the closed connection; a step may be in flight
        assert passes_after(counter, 1.5) == 0


def test_a_dropped_client_ends_the_run(server_url, tiny_lm):
    script = textwrap.dedent(
        f"""
        import os
        from gradio_client import Client
        client = Client({server_url!r}, verbose=False)
        client.predict({PROMPT!r}, *{SETTINGS!r}, api_name="/reset")
        job = client.submit({PROMPT!r}, 100, {SPEED}, *{SETTINGS!r}, api_name="/autorun")
        for n, _ in enumerate(job, start=1):
            if n == 2:
                print("two tokens", flush=True)
                os._exit(0)  # the process dies: its connections drop without a goodbye
        """
    )
    with counting_forward_passes(tiny_lm) as counter:
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
        assert "two tokens" in result.stdout, result.stderr
        time.sleep(0.6)
        assert passes_after(counter, 1.5) == 0


def test_a_stopped_auto_run_takes_no_step_after_the_stop(tiny_lm):
    # Cancelling Auto-run does not stop the thread running it: resumed after Stop (from its pause,
    # or from a pass it waited on), it must not append a token the page will never show.
    stepper = TokenStepper.from_text(tiny_lm, PROMPT)
    updates = autorun(stepper, PageSettings(), 10, 0.0)
    next(updates)
    shown = list(stepper.ids)
    stepper.stop_runs()  # as the page's Stop does
    assert list(updates) == []
    assert stepper.ids == shown
    assert len(list(autorun(stepper, PageSettings(), 2, 0.0))) == 2  # a new Auto-run runs as usual


def test_stop_waits_for_the_step_in_progress_and_keeps_its_token(tiny_lm):
    stepper = TokenStepper.from_text(tiny_lm, PROMPT)
    updates = autorun(stepper, PageSettings(), 10, 0.0)
    next(updates)
    inside, resume = threading.Event(), threading.Event()

    def hold(module, args, kwargs):  # pauses the run's next pass inside the model
        inside.set()
        assert resume.wait(10)

    hook = tiny_lm.model.register_forward_pre_hook(hold, with_kwargs=True)
    try:
        run = threading.Thread(target=next, args=(updates,))
        run.start()  # the run's thread takes its next step, whose pass is held
        assert inside.wait(10)
        stop = threading.Thread(target=stepper.stop_runs)
        stop.start()
        stop.join(0.3)
        assert stop.is_alive()  # Stop waits for the step in progress
    finally:
        hook.remove()
        resume.set()
    run.join(10)
    stop.join(10)
    length = len(stepper.ids)
    assert length == len(tokstep.tokenize(tiny_lm.tokenizer, PROMPT)) + 2  # that step's token is kept
    assert list(updates) == [] and len(stepper.ids) == length  # and nothing after it
