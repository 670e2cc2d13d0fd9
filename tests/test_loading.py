"""Loading: local folders through the Auto classes, and clear, fast errors for bad names."""

from __future__ import annotations

import pytest
import torch

import tokstep
from tokstep.core.loading import check_hub


def test_a_local_folder_loads_in_eval_mode_in_fp32_on_a_cpu_and_a_half_type_on_a_gpu(tiny_model_dir):
    lm = tokstep.load(str(tiny_model_dir))
    assert lm.name == str(tiny_model_dir)
    assert not lm.model.training
    if torch.cuda.is_available():
        assert lm.device.type == "cuda" and lm.model.dtype in (torch.bfloat16, torch.float16)
    else:
        assert lm.device.type == "cpu" and lm.model.dtype == torch.float32
    assert lm.context_length == lm.model.config.n_positions
    assert lm.eos_token_ids == {lm.tokenizer.eos_token_id}


def test_an_unknown_model_name_fails_fast_with_advice(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(tokstep.ModelLoadError) as caught:
        tokstep.load("tokstep-test/no-such-model-anywhere")
    message = str(caught.value)
    assert "'tokstep-test/no-such-model-anywhere'" in message
    assert "Check the name, connect to the internet, or pass a local directory" in message


def test_offline_mode_fails_at_once(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(tokstep.ModelLoadError, match="offline mode"):
        check_hub("tokstep-test/no-such-model-anywhere")


def test_a_folder_that_is_not_a_model_is_a_clear_error(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(tokstep.ModelLoadError, match="holds no config.json"):
        tokstep.load(str(tmp_path))


def test_a_broken_model_folder_is_a_clear_error(tmp_path, tiny_model_dir):
    (tmp_path / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    with pytest.raises(tokstep.ModelLoadError, match="(?s)could not be loaded.*Hugging Face format"):
        tokstep.load(str(tmp_path))


@pytest.mark.parametrize("name", ["", "   "])
def test_an_empty_name_is_refused(name):
    with pytest.raises(tokstep.ModelLoadError, match="No model name"):
        tokstep.load(name)
