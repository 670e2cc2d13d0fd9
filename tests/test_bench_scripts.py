"""The benchmark scripts run from the repository root and print their tables.

Each runs in its quickest mode (`--smoke`: the bundled model, one repetition) in a subprocess, all
at once to keep the suite short. Only what they print is checked, never how fast anything was:
timings belong in bench/results/ (the newest in docs/performance.md), not in assertions.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import ROOT

import tokstep

# The scripts that drive tokstep itself. bench.threads, bench.bandwidth and bench.packing time
# plain torch (no tokstep code past loading a model; tests/test_packed_linear.py checks what
# packing computes); they are left out to keep the suite short.
SCRIPTS = ("engine", "server", "classroom", "startup", "why_views")
# Each run, by name: the script and its arguments (a class of page Auto-runs besides /generate's).
RUNS = {name: (name, ["--smoke"]) for name in SCRIPTS}
RUNS["classroom-sse"] = ("classroom", ["--smoke", "--client", "sse"])
RUNS["classroom-page"] = ("classroom", ["--smoke", "--client", "page"])
TIMEOUT_S = 600  # a generous bound for a busy machine: a hang fails the test, slowness does not

pytestmark = pytest.mark.skipif("tinystories" not in tokstep.bundled_models(), reason="needs the bundled model")


@pytest.fixture(scope="module")
def outputs() -> dict[str, subprocess.CompletedProcess]:
    # One torch thread each: the runs and their servers share the cores, and idle OpenMP threads spinning
    # in one would only slow the others down.
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_DISABLE_TELEMETRY": "1", "OMP_NUM_THREADS": "1"}
    processes = {
        name: subprocess.Popen(
            [sys.executable, "-m", f"bench.{script}", *arguments],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for name, (script, arguments) in RUNS.items()
    }
    results = {}
    for name, process in processes.items():
        try:
            stdout, stderr = process.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
        results[name] = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    return results


def table_row(stdout: str, first_cell: str) -> list[str]:
    """The cells of the table row that starts with `first_cell`."""
    for line in stdout.splitlines():
        cells = line.split()
        if cells and line.startswith(first_cell):
            return cells
    raise AssertionError(f"no row starting {first_cell!r} in:\n{stdout}")


def check_ran(result: subprocess.CompletedProcess, *expected: str) -> None:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr[-4000:]}"
    assert result.stdout.startswith(("machine:", "torch")), result.stdout
    for text in expected:
        assert text in result.stdout, f"{text!r} missing from:\n{result.stdout}"


def test_engine(outputs):
    check_ran(outputs["engine"], "steps/bare", "gen/steps")
    assert table_row(outputs["engine"].stdout, "tinystories")[1] == "8"  # the 8-token prompt's row


def test_why_views_times_each_view_against_plain_generate(outputs):
    check_ran(outputs["why_views"], "re-read both")
    cells = table_row(outputs["why_views"].stdout, "tinystories")
    assert cells[1] == "8" and cells[3] == "1.00x"  # the 8-token prompt's row; plain against itself
    assert all(float(cell.rstrip("x")) > 0 for cell in cells[3::2])  # a ratio for each way


def test_server_streams_the_engines_tokens(outputs):
    check_ran(
        outputs["server"], "overhead ms/tok", "server tok/s", "page-like ms/tok", "server pass ms", "overhead <= 3 ms"
    )
    row = table_row(outputs["server"].stdout, "tinystories")
    assert row[1] == "16"  # every token came back
    assert row[-2] == "yes"  # both clients got the same tokens as the engine alone
    # The mean pass in the engine's runs and in the server's: both batchers' counters were read.
    engine_pass_ms, server_pass_ms = float(row[-4]), float(row[-3])
    assert engine_pass_ms > 0 and server_pass_ms > 0


def test_classroom_serves_every_client(outputs):
    check_ran(outputs["classroom-sse"], "TTFT p95 s", "gap p95 ms", "memory per idle session")
    clients, ok, refused, failed = table_row(outputs["classroom-sse"].stdout, "3 ")[:4]
    assert (clients, ok, refused, failed) == ("3", "3", "0", "0")


def test_startup(outputs):
    check_ran(outputs["startup"], "target <= 10 s")
    table_row(outputs["startup"].stdout, "app.py")


def test_a_class_of_page_auto_runs_keeps_the_pages_pace(outputs):
    check_ran(outputs["classroom-page"], "presses the page's Auto-run", "the page's pace at 3 tokens/s")
    clients, ok, refused, failed = table_row(outputs["classroom-page"].stdout, "3 ")[:4]
    assert (clients, ok, refused, failed) == ("3", "3", "0", "0")


def test_classroom_compares_every_serving_path_with_the_engine_alone(outputs):
    output = outputs["classroom"]
    check_ran(output, "wall / engine", "gap p95 / engine", "issue 22 targets")
    rows = [line.split() for line in output.stdout.splitlines() if line.startswith("3 ")]
    paths = {row[1]: row for row in rows}
    assert set(paths) == {"engine", "stream", "sse", "gradio_client"}
    assert paths["engine"][7:9] == ["1.00", "1.00"]  # the engine against itself
    assert all(row[9:12] == ["3", "0", "8"] for row in rows)  # 3 ok, 0 failed, every client got 8 updates


def test_classroom_runs_the_flood_and_the_flooding_client_is_told_it_is_over_its_cap(outputs):
    output = outputs["classroom"]
    check_ran(output, "the flood: one client keeps 8 /generate streams", "server RSS before the flood")
    assert table_row(output.stdout, "class under the flood")[-1] == "3"  # every student served
    assert "Too many runs" in output.stdout and "retry" in output.stdout
    served = next(line for line in output.stdout.splitlines() if "every student is served" in line)
    assert served.split()[-4:] == ["3", "of", "3", "PASS"]
