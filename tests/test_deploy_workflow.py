"""The Space deploy workflow: it runs on pushes to main and skips cleanly without a Space."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

WORKFLOW = Path(__file__).resolve().parents[1] / ".github" / "workflows" / "deploy-space.yml"


def workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))


def check_step(tmp_path: Path, env: dict[str, str]) -> tuple[subprocess.CompletedProcess, str]:
    """Run the workflow's "Is a Space configured?" step as Actions would, with `env`."""
    step = next(s for s in workflow()["jobs"]["deploy"]["steps"] if s.get("id") == "check")
    output = tmp_path / "github_output"
    output.write_text("")
    result = subprocess.run(
        ["bash", "-e", "-c", step["run"]],
        env={"PATH": os.environ["PATH"], "GITHUB_OUTPUT": str(output), **env},
        capture_output=True,
        text=True,
    )
    return result, output.read_text()


def test_it_deploys_main_with_the_secret_and_the_variable():
    flow = workflow()
    assert flow[True]["push"]["branches"] == ["main"]  # YAML 1.1 reads the key `on` as True
    job_env = flow["jobs"]["deploy"]["env"]
    assert job_env == {"HF_TOKEN": "${{ secrets.HF_TOKEN }}", "HF_SPACE": "${{ vars.HF_SPACE }}"}
    upload = flow["jobs"]["deploy"]["steps"][-1]
    assert upload["if"] == "steps.check.outputs.deploy == 'true'"
    assert 'hf upload "$HF_SPACE"' in upload["run"] and "--repo-type space" in upload["run"]


@pytest.mark.parametrize(
    ("env", "missing"),
    [
        ({}, "the HF_TOKEN secret and the HF_SPACE variable"),
        ({"HF_TOKEN": "hf_x"}, "the HF_SPACE variable"),
        ({"HF_SPACE": "someone/tokstep"}, "the HF_TOKEN secret"),
    ],
)
def test_without_a_space_it_says_why_and_succeeds(tmp_path, env, missing):
    result, output = check_step(tmp_path, {"HF_TOKEN": "", "HF_SPACE": "", **env})
    assert result.returncode == 0
    assert f"Skipping the deploy: {missing} is not set" in result.stdout
    assert output.strip() == "deploy=false"


def test_with_both_it_deploys(tmp_path):
    result, output = check_step(tmp_path, {"HF_TOKEN": "hf_x", "HF_SPACE": "someone/tokstep"})
    assert result.returncode == 0 and "someone/tokstep" in result.stdout
    assert output.strip() == "deploy=true"
