"""A run submits its next pass before it hands a token out (TokenStepper.prefetch): that pass runs
while the caller holds the token (the batcher's runner thread leads it when no caller does), or
joins whatever batch runs next; the next step reads it, and a run that stops takes it back."""

from __future__ import annotations

import gc
import threading
import time
import weakref

import pytest
import torch
from test_batching import PROMPTS, assert_same_step
from transformers import GPT2LMHeadModel

import tokstep
import tokstep.runtimes.scheduler
from tokstep.core.stepper import Step, TokenStepper
from tokstep.runtimes.in_process import InProcessRuntime
from tokstep.runtimes.scheduler import ForwardBatcher
from tokstep.web.page_handlers import autorun
from tokstep.web.settings import PageSettings


@pytest.fixture(autouse=True)
def prefetching(served_lm, served_bundled_lm, monkeypatch):
    """Lone sequences prefetch in these tests wherever the models were loaded (on a GPU they would not)."""
    for lm in (served_lm, served_bundled_lm):
        monkeypatch.setattr(lm.forward.batcher, "prefetches_alone", True)


def wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def in_thread(work, timeout: float = 10.0) -> None:
    """Run `work` in a thread and fail, rather than hang, when it does not end in time."""
    errors: list[BaseException] = []
    thread = threading.Thread(target=lambda: _collect(work, errors))
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), "still waiting: it needed a pass that could not run"
    if errors:
        raise errors[0]


def runner_threads_since(before: set[threading.Thread]) -> list[threading.Thread]:
    """Batcher runner threads started since `before` (the threads alive then)."""
    return [thread for thread in set(threading.enumerate()) - before if thread.name == "tokstep-forward-runner"]


def _collect(work, errors: list[BaseException]) -> None:
    try:
        work()
    except BaseException as error:  # noqa: BLE001 (re-raised in the test's thread)
        errors.append(error)


def test_a_runs_next_pass_runs_while_the_caller_holds_the_token(served_lm):
    batcher = served_lm.forward.batcher
    passes = batcher.counters.passes
    run = tokstep.generate_steps(served_lm, PROMPTS[0], max_new_tokens=5)
    next(run)  # the prompt's pass, led by this thread
    # Nobody asks for the second token, yet its pass runs (the batcher's runner leads it).
    wait_until(lambda: batcher.counters.passes == passes + 2)
    with served_lm.forward.batcher.forward_lock:  # no pass can run now
        in_thread(lambda: next(run))  # so this one needed none: its pass had run already
        assert batcher.waiting == 1  # the third token's pass, queued before the second was handed out
        run.close()  # stopped early: that pass is withdrawn, not left queued
        assert batcher.waiting == 0
    assert batcher.counters.passes == passes + 2


def test_the_runner_thread_sleeps_while_sequences_lead_their_own_passes(served_lm):
    """Each wake-up of the runner takes the GIL from the pass that is running. A step that asks for
    its pass and waits for it leads that pass itself, so it must not wake the runner; a prefetching
    run wakes it at most once per pass it hands over."""
    batcher = served_lm.forward.batcher
    assert len(list(tokstep.generate_steps(served_lm, PROMPTS[0], max_new_tokens=3))) == 3  # the runner exists
    wait_until(lambda: batcher.waiting == 0)
    wakeups = batcher.counters.runner_wakeups
    stepper = TokenStepper.from_text(served_lm, PROMPTS[1])
    for _ in range(8):
        stepper.step(5)  # no prefetch: each step runs its own pass
    assert batcher.counters.runner_wakeups == wakeups
    passes = batcher.counters.passes
    assert len(list(tokstep.generate_steps(served_lm, PROMPTS[2], max_new_tokens=8))) == 8
    assert batcher.counters.passes - passes == 8
    assert 0 < batcher.counters.runner_wakeups - wakeups <= 7  # the prompt's pass is led by the caller


def test_the_last_step_of_a_run_queues_nothing(served_lm):
    passes = served_lm.forward.batcher.counters.passes
    steps = list(tokstep.generate_steps(served_lm, PROMPTS[1], max_new_tokens=3))
    assert steps[-1].stop_reason == "max_new_tokens"
    time.sleep(0.05)
    assert served_lm.forward.batcher.waiting == 0
    assert served_lm.forward.batcher.counters.passes == passes + 3


def test_a_prefetched_pass_and_another_sessions_step_share_one_pass(served_lm):
    alone_a, alone_b = (TokenStepper.from_text(served_lm, p) for p in PROMPTS[:2])
    expected_a = [alone_a.step(5) for _ in range(2)]
    expected_b = [alone_b.step(5) for _ in range(2)]

    a, b = (TokenStepper.from_text(served_lm, p) for p in PROMPTS[:2])
    first_a, first_b = a.step(5), b.step(5)
    batcher = served_lm.forward.batcher
    passes, served = batcher.counters.passes, batcher.counters.served
    second: dict[str, Step] = {}
    with served_lm.forward.batcher.forward_lock:  # the model is busy: what is asked for now waits for the next pass
        a.prefetch()
        a.prefetch()  # a second call while one is pending queues nothing more
        thread = threading.Thread(target=lambda: second.__setitem__("b", b.step(5)))
        thread.start()
        wait_until(lambda: batcher.waiting == 2)
    thread.join(10)
    assert (batcher.counters.passes - passes, batcher.counters.served - served) == (1, 2)
    second["a"] = a.step(5)
    assert batcher.counters.passes - passes == 1  # A's result was there already
    for got, want in zip([first_a, second["a"], first_b, second["b"]], expected_a + expected_b, strict=True):
        assert_same_step(got, want)


def test_undo_and_release_take_a_queued_pass_back(served_lm):
    reference = TokenStepper.from_text(served_lm, PROMPTS[2])
    reference.step(5), reference.step(5)
    reference.undo()
    expected = reference.step(5)

    stepper = TokenStepper.from_text(served_lm, PROMPTS[2])
    stepper.step(5), stepper.step(5)
    passes = served_lm.forward.batcher.counters.passes
    with served_lm.forward.batcher.forward_lock:
        stepper.prefetch()
        stepper.undo()
        assert served_lm.forward.batcher.waiting == 0
        stepper.prefetch()
        assert stepper.release()
        assert served_lm.forward.batcher.waiting == 0 and not stepper.holds_cache
    time.sleep(0.05)
    assert served_lm.forward.batcher.counters.passes == passes  # neither withdrawn pass ran
    assert_same_step(stepper.step(5), expected)  # reads everything again, then steps


def test_a_run_stopped_while_its_pass_runs_leaves_a_consistent_stepper(served_lm):
    """Dropping a prefetched pass that a pass is running now cannot take it back: the stepper lets
    go of the cache that pass writes into, and its next step reads the sequence again."""
    reference = TokenStepper.from_text(served_lm, PROMPTS[3])
    expected = [reference.step(5) for _ in range(3)]

    stepper = TokenStepper.from_text(served_lm, PROMPTS[3])
    got = [stepper.step(5), stepper.step(5)]
    inside, resume = threading.Event(), threading.Event()

    def hold(module, args, kwargs):  # pauses the next pass inside the model
        inside.set()
        assert resume.wait(10)

    hook = served_lm.model.register_forward_pre_hook(hold, with_kwargs=True)
    try:
        stepper.prefetch()
        assert inside.wait(10)  # the runner has taken the request and is running it
        stepper.drop_prefetch()
        assert not stepper.holds_cache
    finally:
        hook.remove()
        resume.set()
    got.append(stepper.step(5))
    for step, want in zip(got, expected, strict=True):
        assert_same_step(step, want)


@pytest.mark.parametrize("tokens", [1, 12])
def test_prefetching_runs_still_equal_generate(served_bundled_lm, tokens):
    lm, prompt = served_bundled_lm, PROMPTS[4]
    ids = tokstep.tokenize(lm.tokenizer, prompt)
    with torch.inference_mode():
        expected = lm.model.generate(
            torch.tensor([ids]), do_sample=False, max_new_tokens=tokens, pad_token_id=lm.tokenizer.eos_token_id
        )[0, len(ids) :].tolist()
    assert [step.token_id for step in tokstep.generate_steps(lm, prompt, max_new_tokens=tokens)] == expected
    assert lm.forward.batcher.waiting == 0


def test_a_lone_sequence_prefetches_on_the_cpu_and_not_on_other_devices(served_lm):
    on_cpu = GPT2LMHeadModel(served_lm.model.config)  # built on the CPU, wherever served_lm was loaded
    with torch.device("meta"):  # the same model with no weights anywhere: only its device differs
        elsewhere = GPT2LMHeadModel(served_lm.model.config)
    assert (on_cpu.device.type, elsewhere.device.type) == ("cpu", "meta")
    assert ForwardBatcher(on_cpu, threading.Lock()).prefetches_alone
    assert not ForwardBatcher(elsewhere, threading.Lock()).prefetches_alone


def test_a_model_moved_after_its_batcher_was_made_is_fed_where_it_is_now(served_lm):
    # As `lm.model.to("cuda")` after loading would move it; "meta" stands in for the GPU.
    model = GPT2LMHeadModel(served_lm.model.config)
    batcher = ForwardBatcher(model, threading.Lock())
    assert batcher.prefetches_alone
    model.to("meta")
    assert not batcher.prefetches_alone

    class Fed(Exception):
        """Stops the pass once the embedding has seen its input (a meta model computes nothing)."""

    def stop_at_the_embedding(module, args):
        raise Fed(args[0].device.type)

    model.get_input_embeddings().register_forward_pre_hook(stop_at_the_embedding)
    with pytest.raises(Fed) as fed:
        batcher.forward([5, 17, 3], None, 0)
    assert fed.value.args == ("meta",)


@pytest.fixture
def accelerator_like_lm(tiny_lm, monkeypatch):
    """tiny_lm served by a runtime of its own, whose batcher behaves as on an accelerator: a lone
    sequence does not prefetch. Sequences count as stepping together for a minute after their last pass."""
    monkeypatch.setattr(tokstep.runtimes.scheduler, "RECENT_SLACK_S", 60.0)
    lm = InProcessRuntime().serve(tiny_lm)
    lm.forward.batcher.prefetches_alone = False
    return lm


def test_a_run_that_ended_or_was_stopped_is_not_counted_as_stepping_beside_the_next(accelerator_like_lm):
    # The fixture keeps a sequence "recent" for a minute after its last pass, unless its run ended.
    batcher = accelerator_like_lm.forward.batcher
    stepping = tokstep.generate_steps(accelerator_like_lm, PROMPTS[1], max_new_tokens=10)
    next(stepping)
    assert batcher.should_prefetch("a new sequence")  # beside a run in progress: a class
    stepping.close()  # as Stop does
    assert not batcher.should_prefetch("a new sequence")
    assert len(list(tokstep.generate_steps(accelerator_like_lm, PROMPTS[0], max_new_tokens=3))) == 3
    assert not batcher.should_prefetch("a new sequence")  # alone again: no pass waits for the ended runs


def test_a_run_stopped_while_its_pass_runs_is_not_expected_back_when_that_pass_ends(accelerator_like_lm):
    batcher = accelerator_like_lm.forward.batcher
    inside, resume = threading.Event(), threading.Event()

    def hold(module, args, kwargs):  # pauses the pass inside the model
        inside.set()
        assert resume.wait(10)

    hook = accelerator_like_lm.model.register_forward_pre_hook(hold, with_kwargs=True)
    try:
        request = batcher.submit([5, 17, 3], None, 0, sequence="stopped mid-pass")
        assert inside.wait(10)  # the runner is running its pass
        batcher.forget("stopped mid-pass")  # as a run's end does when Stop comes now
    finally:
        hook.remove()
        resume.set()
    batcher.wait(request)  # the pass ran to its end
    assert not batcher.should_prefetch("a new sequence")  # nobody is counted as stepping beside it


def test_the_pages_auto_run_is_not_counted_as_stepping_once_it_ended_or_was_stopped(accelerator_like_lm):
    batcher = accelerator_like_lm.forward.batcher
    stepper = TokenStepper.from_text(accelerator_like_lm, PROMPTS[1])
    updates = autorun(stepper, PageSettings(), 10, 0.0)
    next(updates)
    assert batcher.should_prefetch("a new sequence")
    updates.close()  # as the page's Stop cancels it
    assert not batcher.should_prefetch("a new sequence")
    assert len(list(autorun(stepper, PageSettings(), 2, 0.0))) == 2
    assert not batcher.should_prefetch("a new sequence")


def test_a_lone_run_that_does_not_prefetch_asks_for_each_pass_when_it_needs_it(served_lm, accelerator_like_lm):
    expected = list(tokstep.generate_steps(served_lm, PROMPTS[0], max_new_tokens=4))  # prefetching
    batcher = accelerator_like_lm.forward.batcher
    threads_before = set(threading.enumerate())
    run = tokstep.generate_steps(accelerator_like_lm, PROMPTS[0], max_new_tokens=4)
    got = [next(run)]  # the prompt's pass
    time.sleep(0.05)
    assert (batcher.counters.passes, batcher.waiting) == (1, 0)  # nothing ran or waits ahead
    got += list(run)
    assert batcher.counters.passes == 4
    # Each pass ran in the thread that asked for it: no runner thread was needed.
    assert not runner_threads_since(threads_before)
    for step, want in zip(got, expected, strict=True):
        assert_same_step(step, want)


def test_sequences_that_step_together_prefetch_even_where_a_lone_one_does_not(accelerator_like_lm):
    lm, batcher = accelerator_like_lm, accelerator_like_lm.forward.batcher
    alone_a, alone_b = (TokenStepper.from_text(lm, p) for p in PROMPTS[:2])
    expected = [alone_a.step(5), alone_a.step(5), alone_b.step(5), alone_b.step(5)]

    a, b = (TokenStepper.from_text(lm, p) for p in PROMPTS[:2])
    first_a, first_b = a.step(5), b.step(5)  # each served by a pass: they step together now
    passes = batcher.counters.passes
    with lm.forward.batcher.forward_lock:
        a.prefetch(), b.prefetch()
        assert batcher.waiting == 2
    wait_until(lambda: batcher.counters.passes == passes + 1)  # both ran in one pass, asked for by neither
    for got, want in zip([first_a, a.step(5), first_b, b.step(5)], expected, strict=True):
        assert_same_step(got, want)


def test_a_model_nobody_uses_any_more_is_freed_and_its_runner_thread_ends(tiny_model_dir):
    lm = InProcessRuntime().serve(tokstep.load(str(tiny_model_dir)))
    lm.forward.batcher.prefetches_alone = True  # wherever it was loaded, its runs prefetch: the runner thread starts
    before = set(threading.enumerate())
    assert len(list(tokstep.generate_steps(lm, PROMPTS[0], max_new_tokens=3))) == 3
    (runner,) = runner_threads_since(before)
    model = weakref.ref(lm.model)
    del lm
    gc.collect()
    assert model() is None
    runner.join(10)
    assert not runner.is_alive()
