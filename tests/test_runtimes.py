"""The forward seam: the same stepper on every in-process runtime, and what a notebook gets.

The key invariants hold on the direct call (what `tokstep.load` gives) and on the batched
in-process runtime (what the app serves): greedy stepping equals `model.generate`, shown
probabilities are the full-vocabulary softmax, undo goes back exactly, seeded sampling repeats.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

import tokstep
from tokstep.core.forward import DirectForward
from tokstep.core.model import LanguageModel
from tokstep.runtimes.in_process import BatchedForward, InProcessRuntime

PROMPT = "Once upon a time"
NEW_TOKENS = 12


@pytest.fixture(params=["direct", "batched"])
def lm(request: pytest.FixtureRequest, tiny_lm: LanguageModel, served_lm: LanguageModel) -> LanguageModel:
    return tiny_lm if request.param == "direct" else served_lm


def test_load_gives_the_direct_call_and_serving_gives_the_batched_runtime(tiny_lm, served_lm):
    assert isinstance(tiny_lm.forward, DirectForward)
    assert isinstance(served_lm.forward, BatchedForward)
    # Serving wraps the same model and tokenizer; the loaded LanguageModel is left as it was.
    assert served_lm.model is tiny_lm.model and served_lm.tokenizer is tiny_lm.tokenizer
    runtime = served_lm.forward.runtime
    assert runtime.serve(served_lm) is served_lm  # served once: serving again changes nothing
    assert isinstance(InProcessRuntime().serve(served_lm).forward, BatchedForward)


def test_greedy_steps_equal_generate_on_every_runtime(lm):
    ids = tokstep.tokenize(lm.tokenizer, PROMPT)
    with torch.inference_mode():
        expected = lm.model.generate(
            torch.tensor([ids]), do_sample=False, max_new_tokens=NEW_TOKENS, pad_token_id=0, eos_token_id=None
        )[0, len(ids) :].tolist()
    steps = list(tokstep.generate_steps(lm, ids, max_new_tokens=NEW_TOKENS))
    assert [step.token_id for step in steps] == expected[: len(steps)]
    assert steps[-1].stop_reason is not None


def test_shown_probabilities_are_a_fresh_full_forward_softmax_on_every_runtime(lm):
    stepper = tokstep.TokenStepper.from_text(lm, PROMPT)
    for _ in range(4):
        step = stepper.step(top_k_size=5)
        with torch.inference_mode():
            logits = lm.model(input_ids=torch.tensor([stepper.ids[:-1]]), use_cache=False).logits[0, -1]
        probs = torch.softmax(logits.float(), dim=-1)  # (vocab,): the whole vocabulary
        assert step.prob == pytest.approx(float(probs[step.token_id]), abs=1e-5)
        for candidate in step.top:
            assert candidate.prob == pytest.approx(float(probs[candidate.token_id]), abs=1e-5)
        assert step.rest_prob == pytest.approx(1.0 - sum(float(probs[c.token_id]) for c in step.top), abs=1e-5)


def test_undo_then_step_equals_the_straight_path_on_every_runtime(lm):
    straight = tokstep.TokenStepper.from_text(lm, PROMPT)
    straight_steps = [straight.step() for _ in range(6)]
    wandering = tokstep.TokenStepper.from_text(lm, PROMPT)
    for _ in range(4):
        wandering.step()
    for _ in range(3):
        wandering.undo()
    for _ in range(5):
        wandering.step()
    assert wandering.ids == straight.ids
    for got, want in zip(wandering.steps, straight_steps, strict=True):
        assert got.prob == pytest.approx(want.prob, abs=1e-5)


def test_seeded_sampling_repeats_on_every_runtime(lm):
    settings = tokstep.SamplingSettings(temperature=0.9, seed=11)
    runs = [[step.token_id for step in tokstep.generate_steps(lm, PROMPT, 8, sampling=settings)] for _ in range(2)]
    assert runs[0] == runs[1]


def test_a_direct_stepper_keeps_its_cache_however_many_there_are(tiny_lm):
    """A notebook's steppers are its own: none gives its cache back because others exist."""
    steppers = [tokstep.TokenStepper.from_text(tiny_lm, f"{PROMPT} {n}") for n in range(40)]
    for stepper in steppers:
        stepper.step()
    assert all(stepper.holds_cache for stepper in steppers)


def test_a_notebook_process_runs_no_extra_thread(tiny_model_dir):
    """`tokstep.load`, `generate_steps` and a stepper's step, pick, undo and prompt scores start no
    Python thread, in a fresh process. (transformers' loading progress bar would start tqdm's monitor
    thread, which is not tokstep's: it is switched off.)"""
    script = textwrap.dedent(
        f"""
        import threading
        from transformers.utils import logging

        import tokstep

        logging.disable_progress_bar()
        lm = tokstep.load({str(tiny_model_dir)!r}, device_map="cpu")
        steps = list(tokstep.generate_steps(lm, "Once upon a time", max_new_tokens=8))
        stepper = tokstep.TokenStepper.from_text(lm, "Once upon a time")
        stepper.step()
        stepper.step(token_id=steps[0].token_id)
        stepper.undo()
        stepper.step(sampling=tokstep.SamplingSettings(seed=1))
        stepper.prompt_scores()
        print(len(steps), [thread.name for thread in threading.enumerate()])
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    count, threads = done.stdout.strip().split(" ", 1)
    assert int(count) == 8
    assert threads == "['MainThread']"
