"""`python app.py` as a user runs it: model choice, start-up, and clear failures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import free_port

from tokstep.loading import bundled_models

ROOT = Path(__file__).resolve().parents[1]


def run_app(args: list[str], env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "app.py", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


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


def serve(args: list[str], env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "app.py", *args, "--port", str(port)],
        cwd=ROOT,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    return process, f"http://127.0.0.1:{port}/"


def stop(process: subprocess.Popen) -> str:
    process.terminate()
    try:
        _, err = process.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        _, err = process.communicate()
    return err


def test_unknown_model_exits_with_one_clear_line(monkeypatch):
    started = time.monotonic()
    result = run_app(["--model", "tokstep-test/no-such-model-anywhere"])
    assert result.returncode != 0
    assert time.monotonic() - started < 45
    assert "Traceback" not in result.stderr
    assert "tokstep: Model 'tokstep-test/no-such-model-anywhere'" in result.stderr
    assert "pass a local directory" in result.stderr


def test_model_from_the_command_line_serves_the_page(tiny_model_dir):
    process, url = serve(["--model", str(tiny_model_dir)])
    try:
        config = wait_for_page(process, url)
        assert str(tiny_model_dir) in config  # the page names the model it runs
        elem_ids = {c.get("props", {}).get("elem_id") for c in json.loads(config)["components"]}
        assert {"prompt", "tokens", "topk", "step", "autorun", "stop", "reset"} <= elem_ids
    finally:
        stop(process)


def test_model_from_the_environment(tiny_model_dir):
    process, url = serve([], env={"TOKSTEP_MODEL": str(tiny_model_dir)})
    try:
        assert str(tiny_model_dir) in wait_for_page(process, url)
    finally:
        stop(process)


@pytest.mark.skipif(not bundled_models(), reason="no bundled model in tokstep/models yet")
def test_offline_default_falls_back_to_the_bundled_model():
    started = time.monotonic()
    process, url = serve([], env={"HF_HUB_OFFLINE": "1", "TOKSTEP_MODEL": ""})
    try:
        config = wait_for_page(process, url)
        assert "bundled offline model" in config
        assert time.monotonic() - started < 60
    finally:
        err = stop(process)
    assert "tokstep: The default model 'gpt2' is not available here" in err


def test_explicit_gpt2_offline_fails_instead_of_falling_back():
    result = run_app(["--model", "gpt2"], env={"HF_HUB_OFFLINE": "1"})
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "Model 'gpt2'" in result.stderr
