"""Fixtures for the model-choice tests: a second tiny GPT-2 (another seed, so other tokens), a
model folder that fails to load, and a real server offering both next to conftest's tiny model.

Test modules use them with `pytest_plugins = ["model_choice_support"]`, so the session-wide
server is shared. The tests act as the operator: they put local folders on the allowlist.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import TINY_CONTEXT, serving
from transformers import GPT2Config, GPT2LMHeadModel, GPT2Tokenizer

import tokstep
from tokstep.core.model import LanguageModel


def save_tiny_gpt2(folder: Path, tokenizer: GPT2Tokenizer, seed: int) -> Path:
    """A random 2-layer GPT-2 with GPT-2's vocabulary, peaked like conftest's tiny model."""
    torch.manual_seed(seed)
    config = GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=TINY_CONTEXT, tie_word_embeddings=False)
    model = GPT2LMHeadModel(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(40.0)
    tokenizer.save_pretrained(folder)
    model.save_pretrained(folder)
    return folder


def save_broken_model(folder: Path) -> Path:
    """A folder that looks like a model (it has a config.json) but names no known architecture:
    tokstep.load fails at once, offline, with a ModelLoadError."""
    (folder / "config.json").write_text(json.dumps({"model_type": "tokstep-no-such-architecture"}))
    return folder


@pytest.fixture(scope="session")
def other_model_dir(tmp_path_factory: pytest.TempPathFactory, gpt2_tokenizer: GPT2Tokenizer) -> Path:
    return save_tiny_gpt2(tmp_path_factory.mktemp("other-gpt2"), gpt2_tokenizer, seed=99)


@pytest.fixture(scope="session")
def other_lm(other_model_dir: Path) -> LanguageModel:
    """The second model, loaded on its own (not the server's copy) to derive expected tokens."""
    return tokstep.load(str(other_model_dir))


@pytest.fixture(scope="session")
def broken_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_broken_model(tmp_path_factory.mktemp("broken-model"))


@pytest.fixture(scope="session")
def choice_server_url(tiny_lm: LanguageModel, other_model_dir: Path, broken_model_dir: Path) -> Iterator[str]:
    """A real tokstep server on the tiny model that also offers the other one and the broken one."""
    from tokstep.web.page import create_demo

    with serving(create_demo(tiny_lm, models=[str(other_model_dir), str(broken_model_dir)])) as url:
        yield url
