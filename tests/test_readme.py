"""README is the contract: its commands are the ones CI and the Space use."""

from __future__ import annotations

import re
from pathlib import Path

import gradio

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def command_under(heading: str) -> str:
    section = README.split(f"## {heading}\n", 1)[1]
    return re.search(r"```bash\n(.+?)\n```", section, re.S).group(1).strip()


def test_ci_runs_exactly_the_readme_test_command():
    ci_lines = [line for line in (ROOT / ".ci/run").read_text().splitlines() if line and not line.startswith("#")]
    assert command_under("Run the tests") in ci_lines


def test_readme_run_command_installs_and_starts_the_app():
    command = command_under("Run the demo")
    assert "pip install -r requirements.txt" in command and "python app.py" in command


def test_space_front_matter_matches_the_pinned_gradio():
    front_matter = README.split("---\n")[1]
    assert f"sdk_version: {gradio.__version__}" in front_matter
    assert "app_file: app.py" in front_matter
    pins = (ROOT / "requirements.txt").read_text()
    assert f"gradio=={gradio.__version__}" in pins
