"""One run loop (tokstep.core.run_loop) for generate_steps, /generate, the page's Auto-run and the
chat's: a stopped run ends quietly and withdraws its queued pass, whether it steps a TokenStepper or
a chat turn; its last step says why it ended; and through a real server, the chat's Auto-run and
/generate end the same way when their client goes away."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from conftest import serving
from gradio_client import Client
from test_chat import MESSAGE, chat_lm, chat_model_dir, greedy_reply  # noqa: F401 (fixtures)
from test_prefetch import in_thread
from test_stop_and_disconnect import counting_forward_passes, passes_after, wait_until

import tokstep
from tokstep.core.chat import ChatError, start_turn
from tokstep.core.run_loop import run_steps
from tokstep.core.stepper import TokenStepper
from tokstep.runtimes.in_process import InProcessRuntime
from tokstep.web.pacing import Paced
from tokstep.web.page import create_demo
from tokstep.web.settings import chat_arguments

PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def served_chat_lm(chat_lm):  # noqa: F811
    """The tiny chat model served as the app serves its models, its lone runs prefetching anywhere."""
    lm = InProcessRuntime().serve(chat_lm)
    lm.forward.batcher.prefetches_alone = True
    return lm


@pytest.fixture
def prefetching(served_lm, monkeypatch):
    monkeypatch.setattr(served_lm.forward.batcher, "prefetches_alone", True)
    return served_lm


def chat_run(turn, tokens: int, **options) -> Iterator:
    """A chat turn's run, as the chat's Auto-run steps it: the turn's own step, over at its end."""
    return run_steps(turn.stepper, tokens, 5, None, step=options.pop("step", turn.step), ends=lambda _: turn.over)


def test_a_stopped_run_ends_quietly_and_takes_its_queued_pass_back_for_a_stepper_and_a_chat_turn(
    prefetching, served_chat_lm
):
    stepper = TokenStepper.from_text(prefetching, PROMPT)
    turn = start_turn(served_chat_lm, [], MESSAGE)
    for sequence, run in [(stepper, run_steps(stepper, 10, 5)), (turn.stepper, chat_run(turn, 10))]:
        batcher = sequence.lm.forward.batcher
        passes = batcher.counters.passes
        next(run)
        # The prompt's pass, and the next token's, queued before the first was handed out.
        wait_until(lambda batcher=batcher, passes=passes: batcher.counters.passes == passes + 2)
        with batcher.forward_lock:  # no pass can run now: the one the run queues next waits
            in_thread(lambda run=run: next(run))  # needs no pass: it ran already
            assert batcher.waiting == 1
            shown, steps = list(sequence.ids), list(sequence.steps)
            sequence.stop_runs()  # as Stop, Undo or a pick does
            assert list(run) == []  # no step, no error
            assert batcher.waiting == 0  # the run's end withdrew the queued pass
        assert (sequence.ids, sequence.steps) == (shown, steps)


def test_the_last_step_says_why_the_run_ended_and_the_record_keeps_the_token_as_chosen(tiny_lm, chat_lm):  # noqa: F811
    stepper = TokenStepper.from_text(tiny_lm, PROMPT)
    steps = list(run_steps(stepper, 3, 5))
    assert [step.stop_reason for step in steps] == [None, None, "max_new_tokens"]
    assert stepper.steps[-1].stop_reason is None  # a run file exported now is as if stepped by hand
    # A chat turn's run ends at its end-of-turn token, which is the model's reason, not "max_new_tokens".
    turn = start_turn(chat_lm, [], MESSAGE)
    reply = greedy_reply(chat_lm, turn.stepper.ids)
    steps = list(chat_run(turn, len(reply)))
    assert [step.token_id for step in steps] == reply and turn.ended_by_model
    assert steps[-1].stop_reason != "max_new_tokens"
    with pytest.raises(ChatError, match="turn is over"):  # the loop steps through the turn, which refuses more
        next(chat_run(turn, 5))
    short = start_turn(chat_lm, [], MESSAGE)
    assert [step.stop_reason for step in chat_run(short, 2)] == [None, "max_new_tokens"]


def test_generate_steps_is_the_shared_loop(tiny_lm):
    expected = [s.token_id for s in run_steps(TokenStepper.from_text(tiny_lm, PROMPT), 6, 5)]
    assert [s.token_id for s in tokstep.generate_steps(tiny_lm, PROMPT, max_new_tokens=6)] == expected


def test_a_paced_run_waits_between_its_steps_and_not_after_the_last(tiny_lm):
    stepper = TokenStepper.from_text(tiny_lm, PROMPT)
    run = run_steps(stepper, 3, 5, step=Paced(stepper.step, 0.3))
    started = time.monotonic()
    arrivals = []
    for _ in run:
        arrivals.append(time.monotonic() - started)
    gaps = [later - earlier for earlier, later in zip(arrivals, arrivals[1:], strict=False)]
    assert len(arrivals) == 3 and min(gaps) >= 0.29


@pytest.fixture(scope="module")
def chat_page_url(chat_lm) -> Iterator[str]:  # noqa: F811
    """The app's page on the chat model: its chat section and /generate run on it."""
    with serving(create_demo(chat_lm)) as url:
        yield url


def test_the_chats_auto_run_and_generate_end_the_same_way_when_their_client_goes(chat_page_url, chat_lm):  # noqa: F811
    reply = greedy_reply(chat_lm, start_turn(chat_lm, [], MESSAGE).stepper.ids)
    assert len(reply) >= 6  # room to stop the run before the model ends its turn
    chat = Client(chat_page_url, verbose=False)
    chat.predict(MESSAGE, *chat_arguments(), api_name="/chat_send")
    api = Client(chat_page_url, verbose=False)
    runs = {  # each job, and how many updates it would send if nobody stopped it
        "chat Auto-run": (lambda: chat.submit(*chat_arguments(speed=4.0), api_name="/chat_autorun"), len(reply)),
        "/generate": (lambda: api.submit("Hello", 40, api_name="/generate"), 40),
    }
    # Every pass takes 50 ms at least, so /generate's 40 tokens take 2 s: long enough to be stopped.
    slow = chat_lm.model.register_forward_pre_hook(lambda module, args: time.sleep(0.05))
    try:
        with counting_forward_passes(chat_lm) as counter:
            for name, (submit, full) in runs.items():
                job = submit()
                wait_until(lambda job=job: len(job.outputs()) >= 2)
                job.cancel()
                wait_until(job.done, timeout=5)
                time.sleep(0.5)  # the step in flight when the client went, and its queued pass, may end
                assert passes_after(counter, 1.0) == 0, name  # then nothing: the run is over
                assert len(job.outputs()) < full, name
    finally:
        slow.remove()


def test_the_chats_auto_run_and_generate_both_say_the_tokens_asked_for_were_written(chat_page_url):
    chat = Client(chat_page_url, verbose=False)
    chat.predict(MESSAGE, *chat_arguments(), api_name="/chat_send")
    *_, last = chat.submit(*chat_arguments(tokens=2, speed=20.0), api_name="/chat_autorun")
    assert "Auto-run wrote the 2 tokens asked for" in last[-1]
    *_, update = Client(chat_page_url, verbose=False).submit("Hello", 2, api_name="/generate")
    assert update["stop_reason"] == "max_new_tokens"
