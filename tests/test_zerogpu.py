"""The ZeroGPU runtime on the CPU: `spaces.GPU` is a no-op off a Space, the passes it decorates give
what the model in process gives, and nothing of a call is kept but CPU tensors or ids."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import ROOT, serving
from gradio_client import Client
from transformers.cache_utils import DynamicCache

import tokstep
from tokstep.core.sampling import SamplingSettings
from tokstep.core.stepper import TokenStepper
from tokstep.runtimes.engine import EngineCache
from tokstep.runtimes.zerogpu import PASS_DURATION_S, ZeroGPURuntime, gpu_pass, on_zero_gpu

PROMPT = "Once upon a time"


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items() if key != "SPACES_ZERO_GPU"} | env
    return subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning", "-c", textwrap.dedent(code)],
        cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_off_a_space_spaces_gpu_hands_back_the_function_itself():
    import spaces

    def task(x: int) -> int:
        return x + 1

    assert spaces.GPU(duration=PASS_DURATION_S)(task) is task
    assert spaces.GPU(task) is task
    assert not hasattr(gpu_pass, "zerogpu")  # what the decorator marks its wrappers with on a Space


def test_importing_spaces_on_a_cpu_is_quick_quiet_and_leaves_gradio_alone():
    result = run_python(
        """
        import sys, time
        started = time.perf_counter()
        import spaces
        print(time.perf_counter() - started, "gradio" in sys.modules, spaces.GPU(print) is print)
        """
    )
    assert result.returncode == 0, result.stderr
    seconds, gradio_loaded, identity = result.stdout.split()
    assert float(seconds) < 5 and gradio_loaded == "False" and identity == "True"
    assert "Warning" not in result.stderr


def test_the_passes_are_decorated_with_a_duration_that_fits_one_pass():
    result = run_python(
        """
        import json, spaces
        seen = {}
        def recording(task=None, *, duration=None, size=None):
            def decorate(function):
                seen[function.__name__] = duration
                return function
            return decorate(task) if callable(task) else decorate
        spaces.GPU = recording
        import tokstep.runtimes.zerogpu
        print(json.dumps(seen))
        """
    )
    assert result.returncode == 0, result.stderr
    decorated = {"gpu_pass", "gpu_prompt_logits", "gpu_prompt_scores"}
    assert json.loads(result.stdout) == dict.fromkeys(decorated, PASS_DURATION_S)
    assert PASS_DURATION_S <= 30  # one pass: a short reservation is queued sooner and asks less of the quota


@pytest.mark.parametrize(
    "value, expected", [("true", True), ("1", True), ("True", True), ("", False), ("false", False), ("0", False)]
)
def test_a_zerogpu_space_is_recognised_as_the_spaces_package_recognises_it(value, expected):
    assert on_zero_gpu({"SPACES_ZERO_GPU": value}) is expected
    assert on_zero_gpu({}) is False


@pytest.mark.parametrize("strategy", ["reread", "move"])
def test_the_decorated_passes_step_as_the_model_in_process_does(tiny_lm, strategy):
    lm = ZeroGPURuntime(strategy).serve(tiny_lm)
    ids = tokstep.tokenize(tiny_lm.tokenizer, PROMPT)
    generated = tiny_lm.model.generate(torch.tensor([ids]), max_new_tokens=30, do_sample=False, min_new_tokens=30)
    steps = list(tokstep.generate_steps(lm, PROMPT, max_new_tokens=30, top_k=5))
    assert [s.token_id for s in steps] == generated[0, len(ids) :].tolist()
    here = list(tokstep.generate_steps(tiny_lm, PROMPT, max_new_tokens=30, top_k=5))
    assert all(abs(a.prob - b.prob) < 1e-5 and a.rank == b.rank for a, b in zip(here, steps, strict=True))
    assert all(s.estimates == frozenset() for s in steps)  # the whole distribution is here: nothing estimated

    stepper = TokenStepper.from_text(lm, PROMPT)
    for _ in range(4):
        stepper.step()
    kept = DynamicCache if strategy == "move" else EngineCache
    assert isinstance(stepper._cache, kept)  # between calls: CPU tensors, or only the ids
    if strategy == "move":
        assert all(layer.keys.device.type == "cpu" for layer in stepper._cache.layers)
    before = stepper.next_top(5)
    stepper.step()
    stepper.undo()
    after = stepper.next_top(5)
    assert [c.token_id for c in after[0]] == [c.token_id for c in before[0]]
    assert all(abs(a.prob - b.prob) < 1e-6 for a, b in zip(after[0], before[0], strict=True))

    settings = SamplingSettings(temperature=0.9, top_k=20, seed=3)
    sampled = [s.token_id for s in tokstep.generate_steps(lm, PROMPT, 10, sampling=settings)]
    assert sampled == [s.token_id for s in tokstep.generate_steps(tiny_lm, PROMPT, 10, sampling=settings)]
    assert [s.prob for s in TokenStepper.from_text(lm, PROMPT).prompt_scores()[1:]] == pytest.approx(
        [s.prob for s in TokenStepper.from_text(tiny_lm, PROMPT).prompt_scores()[1:]], abs=1e-6
    )


def test_the_page_runs_on_the_zerogpu_runtime(tiny_lm):
    runtime = ZeroGPURuntime()
    with serving(create_demo_for(tiny_lm, runtime)) as url:
        updates = list(Client(url, verbose=False).submit(PROMPT, 8, api_name="/generate"))
    assert [u["token_id"] for u in updates] == [s.token_id for s in tokstep.generate_steps(tiny_lm, PROMPT, 8)]


def create_demo_for(lm, runtime):
    from tokstep.web.page import create_demo

    return create_demo(lm, runtime=runtime)
