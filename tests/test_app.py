"""`python app.py` as a user runs it: model choice, start-up, and clear failures."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import free_port
from gradio_client import Client
from gradio_client.exceptions import AppError

from tokstep.core.loading import bundled_models

ROOT = Path(__file__).resolve().parents[1]


def wait_for_page(process: subprocess.Popen, url: str, timeout: float = 90) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"app exited early: {process.stderr.read()}")
        try:
            with urllib.request.urlopen(url + "config", timeout=2) as response:
                return response.read().decode()
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"no page at {url} within {timeout} s")


@dataclass
class AppRun:
    """A `python app.py` started on a port of its own."""

    process: subprocess.Popen
    url: str
    started: float  # time.monotonic() at its start


def start_app(args: list[str], env: dict[str, str] | None = None) -> AppRun:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "app.py", *args, "--port", str(port)],
        cwd=ROOT,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    return AppRun(process, f"http://127.0.0.1:{port}/", time.monotonic())


# Starts that must fail with one clear line: (arguments, environment, what stderr must say).
FAILING_STARTS = {
    "unknown model": (["--model", "tokstep-test/no-such-model-anywhere"], {},
                      "tokstep: Model 'tokstep-test/no-such-model-anywhere'"),
    "TOKSTEP_MAX_API_RUNS": ([], {"TOKSTEP_MAX_API_RUNS": "lots"},
                             "tokstep: TOKSTEP_MAX_API_RUNS must be a whole number (0: no limit)"),
    "TOKSTEP_TRUST_FORWARDED_FOR": ([], {"TOKSTEP_TRUST_FORWARDED_FOR": "maybe"},
                                    "tokstep: TOKSTEP_TRUST_FORWARDED_FOR must be 1 or 0"),
    "--tokens-per-minute": (["--tokens-per-minute", "-5"], {},
                            "tokstep: --tokens-per-minute must be a whole number of 0 or more"),
}  # fmt: skip


@pytest.fixture(scope="module")
def apps(tiny_model_dir: Path) -> Iterator[dict[str, AppRun]]:
    """The apps the tests below check, all started at once, those that must fail too: each spends ~10 s
    importing torch, transformers and Gradio, and side by side they take about half as long as one after
    another."""
    runs = {
        # With a fair-share flag too: the one app start that checks the flags reach the page.
        "model on the command line": start_app(["--model", str(tiny_model_dir), "--max-api-tokens", "3"]),
        "model from the environment": start_app([], env={"TOKSTEP_MODEL": str(tiny_model_dir)}),
        "explicit gpt2 offline": start_app(["--model", "gpt2"], env={"HF_HUB_OFFLINE": "1"}),
        **{name: start_app(args, env=env) for name, (args, env, _) in FAILING_STARTS.items()},
    }
    if bundled_models():
        runs["offline default"] = start_app([], env={"HF_HUB_OFFLINE": "1", "TOKSTEP_MODEL": ""})
    yield runs
    for run in runs.values():
        stop(run.process)


def exited(run: AppRun, timeout: float = 90) -> tuple[int, str]:
    """The exit code and stderr of an app that is to exit by itself."""
    _, err = run.process.communicate(timeout=timeout)
    return run.process.returncode, err


def stop(process: subprocess.Popen) -> str:
    if process.poll() is not None and process.stderr is not None and process.stderr.closed:
        return ""  # it exited and its output was read (`exited`)
    process.terminate()
    try:
        _, err = process.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        _, err = process.communicate()
    return err


def test_unknown_model_exits_with_one_clear_line(apps):
    returncode, stderr = exited(apps["unknown model"])
    assert returncode != 0
    assert "Traceback" not in stderr
    assert FAILING_STARTS["unknown model"][2] in stderr
    assert "pass a local directory" in stderr


def test_model_from_the_command_line_serves_the_page(apps, tiny_model_dir):
    run = apps["model on the command line"]
    config = wait_for_page(run.process, run.url)
    assert str(tiny_model_dir) in config  # the page names the model it runs
    elem_ids = {c.get("props", {}).get("elem_id") for c in json.loads(config)["components"]}
    assert {"prompt", "tokens", "topk", "step", "autorun", "stop", "reset"} <= elem_ids


def test_fair_share_flags_reach_the_page(apps):
    run = apps["model on the command line"]
    wait_for_page(run.process, run.url)
    client = Client(run.url, verbose=False)
    with pytest.raises(AppError, match=re.escape("max_new_tokens must be a whole number from 1 to 3 (the most")):
        client.predict("Once upon a time", 4, api_name="/generate")
    assert len(list(client.submit("Once upon a time", 3, api_name="/generate"))) == 3


@pytest.mark.parametrize("name", ["TOKSTEP_MAX_API_RUNS", "TOKSTEP_TRUST_FORWARDED_FOR", "--tokens-per-minute"])
def test_a_bad_fair_share_setting_exits_with_one_clear_line(apps, name):
    returncode, stderr = exited(apps[name])
    assert returncode != 0
    assert "Traceback" not in stderr
    assert FAILING_STARTS[name][2] in stderr


def test_model_from_the_environment(apps, tiny_model_dir):
    run = apps["model from the environment"]
    assert str(tiny_model_dir) in wait_for_page(run.process, run.url)


@pytest.mark.skipif(not bundled_models(), reason="no bundled model in tokstep/models yet")
def test_offline_default_falls_back_to_the_bundled_model(apps):
    run = apps["offline default"]
    config = wait_for_page(run.process, run.url)
    assert "bundled offline model" in config
    assert "tokstep: The default model 'gpt2' is not available here" in stop(run.process)


def test_explicit_gpt2_offline_fails_instead_of_falling_back(apps):
    run = apps["explicit gpt2 offline"]
    _, err = run.process.communicate(timeout=90)
    assert run.process.returncode != 0
    assert "Traceback" not in err
    assert "Model 'gpt2'" in err
