"""Tiny random-weight causal LMs of many architectures, for tests that work offline.

Each model is built from its transformers config alone (`AutoConfig.for_model` and
`AutoModelForCausalLM.from_config`): 2 layers, hidden size 64, GPT-2's real vocabulary (50,257
tokens, so `tokstep.testing.gpt2_tokenizer()` reads and writes its ids), fp32, on the CPU, in eval
mode. Its output layer is scaled up (x40, as tests/conftest.py does for the tiny GPT-2), so the
next-token distribution is peaked like a trained model's and greedy choices are not near-ties:
the top two logits lie far more apart than float rounding (also where gemma2 and recurrent_gemma
soft-cap their logits at 30, which narrows the gaps). bos, eos and pad are GPT-2's <|endoftext|>,
in the config and the generation config alike, so tokstep and `model.generate` stop on the same id.

Where an architecture mixes layer kinds, the two layers are one of each: a sliding-window layer
(window of SLIDING_WINDOW positions, shorter than a test's sequence) and a full-attention one
(gemma2, gemma3_text, gpt_oss), or an attention layer and a recurrent one (jamba, lfm2,
recurrent_gemma). Mistral slides its window on both layers; falcon_h1's layers are each both
(attention and Mamba-2 side by side). deepseek_v3's MLA caches its compressed latent (16) and
its rotary key (8) as one-head "keys" and "values" of different sizes, as the real model does.

>>> lm = tiny_causal_lm("llama")
>>> lm.vocab_size
50257
"""

from __future__ import annotations

from functools import cache
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

import tokstep
import tokstep.testing

HIDDEN = 64  # hidden size of every model
LAYERS = 2
CONTEXT = 128  # positions the models with a position limit read
SLIDING_WINDOW = 8  # shorter than a test's sequence, so windows really slide
HEAD_SCALE = 40.0  # the output layer's scale-up (see the module docstring)
SEED = 1234
END_OF_TEXT = 50256  # GPT-2's <|endoftext|>: every model's bos, eos and pad id

# Attention settings most decoder configs share: 4 heads of 16, 2 of them for keys and values.
_ATTENTION: dict[str, Any] = {
    "hidden_size": HIDDEN,
    "intermediate_size": 2 * HIDDEN,
    "num_hidden_layers": LAYERS,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": CONTEXT,
}
_MOE: dict[str, Any] = {"num_experts_per_tok": 2}
_HYBRID_LAYERS = ["sliding_attention", "full_attention"]

# model_type -> the config's settings, besides the vocabulary and special ids (see _config).
CONFIGS: dict[str, dict[str, Any]] = {
    "gpt2": {"n_embd": HIDDEN, "n_layer": LAYERS, "n_head": 4, "n_positions": CONTEXT},
    "llama": {**_ATTENTION},
    "mistral": {**_ATTENTION, "sliding_window": SLIDING_WINDOW},
    "qwen2": {**_ATTENTION},
    "qwen3": {**_ATTENTION, "head_dim": 16},
    "qwen3_moe": {
        **_ATTENTION, **_MOE, "head_dim": 16, "num_experts": 4, "moe_intermediate_size": 32, "decoder_sparse_step": 1,
    },
    "gemma2": {
        **_ATTENTION, "head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": SLIDING_WINDOW,
        "layer_types": _HYBRID_LAYERS,
    },
    "gemma3_text": {
        **_ATTENTION, "head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": SLIDING_WINDOW,
        "layer_types": _HYBRID_LAYERS,
    },
    "phi3": {**_ATTENTION, "original_max_position_embeddings": CONTEXT},
    "gpt_neox": {**_ATTENTION, "num_key_value_heads": None},
    "opt": {
        "hidden_size": HIDDEN, "ffn_dim": 2 * HIDDEN, "num_hidden_layers": LAYERS, "num_attention_heads": 4,
        "word_embed_proj_dim": HIDDEN, "max_position_embeddings": CONTEXT,
    },
    "bloom": {"hidden_size": HIDDEN, "n_layer": LAYERS, "n_head": 4},
    "falcon": {
        "hidden_size": HIDDEN, "num_hidden_layers": LAYERS, "num_attention_heads": 4,
        "max_position_embeddings": CONTEXT,
    },
    "gpt_bigcode": {"n_embd": HIDDEN, "n_layer": LAYERS, "n_head": 4, "n_positions": CONTEXT},
    "gptj": {"n_embd": HIDDEN, "n_layer": LAYERS, "n_head": 4, "rotary_dim": 8, "n_positions": CONTEXT},
    "mixtral": {**_ATTENTION, **_MOE, "num_local_experts": 4},
    "deepseek_v3": {
        **_ATTENTION, "num_key_value_heads": 4, "moe_intermediate_size": 32, "n_shared_experts": 1,
        "n_routed_experts": 4, "num_experts_per_tok": 2, "n_group": 1, "topk_group": 1, "first_k_dense_replace": 1,
        "kv_lora_rank": 16, "q_lora_rank": 32, "qk_rope_head_dim": 8, "qk_nope_head_dim": 8, "v_head_dim": 8,
        "num_mtp_layers": 0,
    },
    "gpt_oss": {
        **_ATTENTION, **_MOE, "head_dim": 16, "num_local_experts": 4, "sliding_window": SLIDING_WINDOW,
        "layer_types": _HYBRID_LAYERS, "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
    },
    "falcon_h1": {
        **_ATTENTION, "head_dim": 16, "mamba_d_ssm": 2 * HIDDEN, "mamba_n_heads": 8, "mamba_d_head": 16,
        "mamba_d_state": 16, "mamba_chunk_size": 16,
    },
    "jamba": {
        **_ATTENTION, **_MOE, "num_experts": 4, "attn_layer_period": 2, "attn_layer_offset": 1,
        "expert_layer_period": 2, "expert_layer_offset": 1,
    },
    "mamba": {"hidden_size": HIDDEN, "num_hidden_layers": LAYERS, "state_size": 16},
    "mamba2": {
        "hidden_size": HIDDEN, "num_hidden_layers": LAYERS, "num_heads": 8, "head_dim": 16, "n_groups": 1,
        "state_size": 16, "chunk_size": 16,
    },
    "recurrent_gemma": {
        "hidden_size": HIDDEN, "intermediate_size": 2 * HIDDEN, "num_hidden_layers": LAYERS, "num_attention_heads": 4,
        "num_key_value_heads": 2, "lru_width": HIDDEN, "attention_window_size": SLIDING_WINDOW,
        "block_types": ["recurrent", "attention"],
    },
    "lfm2": {**_ATTENTION, "layer_types": ["conv", "full_attention"], "block_auto_adjust_ff_dim": False},
}  # fmt: skip

ARCHITECTURES: tuple[str, ...] = tuple(CONFIGS)


def _config(model_type: str) -> Any:
    """The architecture's tiny config: CONFIGS' settings, GPT-2's vocabulary and its <|endoftext|>
    as bos, eos and pad, and no tied output layer (so scaling it leaves the embeddings alone)."""
    settings = {
        "vocab_size": 50257,
        "bos_token_id": END_OF_TEXT,
        "eos_token_id": END_OF_TEXT,
        "pad_token_id": END_OF_TEXT,
        "tie_word_embeddings": False,
        **CONFIGS[model_type],
    }
    return AutoConfig.for_model(model_type, **settings)


def tiny_model(model_type: str, seed: int = SEED) -> PreTrainedModel:
    """A fresh tiny random `model_type` causal LM (see the module docstring), in eval mode."""
    if model_type not in CONFIGS:
        raise ValueError(f"No tiny config for {model_type!r}; known: {', '.join(ARCHITECTURES)}.")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_config(model_type), dtype=torch.float32)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(HEAD_SCALE)
    model.generation_config.eos_token_id = END_OF_TEXT
    model.generation_config.pad_token_id = END_OF_TEXT
    return model.eval()


@cache
def tokenizer() -> PreTrainedTokenizerBase:
    """GPT-2's real tokenizer (`tokstep.testing.gpt2_tokenizer()`), built once: building it takes a second."""
    return tokstep.testing.gpt2_tokenizer()


@cache
def tiny_causal_lm(model_type: str) -> tokstep.LanguageModel:
    """`tiny_model(model_type)` with GPT-2's tokenizer, wrapped by `tokstep.from_objects` (built once
    per process: callers share it read-only, as the demo's sessions do). Its passes are direct
    calls; a test that wants them batched serves it with a runtime."""
    return tokstep.from_objects(f"tiny-{model_type}", tiny_model(model_type), tokenizer())
