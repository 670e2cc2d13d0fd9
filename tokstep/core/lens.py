"""Layer by layer (the "logit lens"): the next token each layer would predict if the model stopped there.

A decoder's layers each add to one running vector per position (the residual stream); after the last
layer the model applies its final norm and its output layer (the unembedding) to that vector, and the
softmax of what comes out is the next token's distribution. The logit lens applies the same final
norm and output layer to the stream after each earlier layer (and to the embeddings, before any
layer), at the sequence's last position: one distribution per layer, the last of them the model's
own. Earlier layers were never trained to be read this way, so their rows are a rough look, not what
the model "thinks" there; how soon the final choice shows up is what students find telling.

Everything here is the model's own modules through transformers' public API: `output_hidden_states`
gives the stream after each layer, `get_output_embeddings()` the output layer, and the final norm
is the module under one of FINAL_NORM_NAMES on the model's decoder (`get_decoder()`, or its
`base_model`). Gemma-style soft-capping of the output, read from the config, is applied as the model
applies it. Nothing is trusted blindly: the norm's input at its last call in the pass (the stream
after the last layer) must give the model's own output through the same norm and output layer;
where it does not, or no norm is found, the lens is not available for that model (`LensUnavailable`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from tokstep.core.distribution import logits_to_probs
from tokstep.core.stepper import TokenProb
from tokstep.core.tokens import TokenTexts

# Where transformers' decoders keep the norm they apply after their last layer (Llama and most
# others: norm; GPT-2, Bloom, Falcon, GPT-J: ln_f; Jamba, Falcon-H1: final_layernorm; GPT-NeoX, OPT:
# final_layer_norm; Mamba: norm_f; RecurrentGemma: final_norm; LFM2: embedding_norm, at its end).
FINAL_NORM_NAMES = ("norm", "ln_f", "final_layernorm", "final_layer_norm", "norm_f", "final_norm", "embedding_norm")
# Config fields of the models that soft-cap their output logits (tanh(x / cap) * cap): Gemma 2 and 3,
# RecurrentGemma.
SOFT_CAP_FIELDS = ("final_logit_softcapping", "logits_soft_cap")
# How far the lens's reading of the last layer's logits may be from the model's own, relative to their
# largest: the same modules on the same numbers, so only a kernel's rounding apart (half precision's
# is about 1e-3) where the lens is right; a model that scales or shifts its output is far past it.
CHECK_RTOL = 2e-3


class LensUnavailable(ValueError):
    """The logit lens cannot be read on this model; the message says why, in one sentence."""


def final_norm(model: PreTrainedModel) -> torch.nn.Module | None:
    """The norm the model applies after its last layer, from its decoder's attributes; None when
    none of FINAL_NORM_NAMES is a module there."""
    owners: list[torch.nn.Module] = []
    with contextlib.suppress(AttributeError, ValueError):  # transformers' lookup gives up on a few exotic models
        owners.append(model.get_decoder())
    owners.append(model.base_model)
    for owner in owners:
        for name in FINAL_NORM_NAMES:
            module = getattr(owner, name, None)
            if isinstance(module, torch.nn.Module):
                return module
    return None


def soft_cap(model: PreTrainedModel) -> float | None:
    """The cap the model's output logits are soft-capped with, or None."""
    for name in SOFT_CAP_FIELDS:
        cap = getattr(model.config, name, None)
        if cap:
            return float(cap)
    return None


def unembed(model: PreTrainedModel, norm: torch.nn.Module, states: torch.Tensor) -> torch.Tensor:
    """The logits the model's final norm and output layer give `states`: (rows, hidden) -> (rows, vocab)."""
    logits = model.get_output_embeddings()(norm(states))  # (rows, vocab)
    cap = soft_cap(model)
    return torch.tanh(logits / cap) * cap if cap is not None else logits


def lens_probs(
    model: PreTrainedModel,
    norm: torch.nn.Module,
    hidden_states: Sequence[torch.Tensor],
    final_input: torch.Tensor,
    logits: torch.Tensor,
) -> torch.Tensor:
    """Each layer's next-token distribution at the last position: (layers + 1, vocab), fp32 on the CPU.

    hidden_states: what `output_hidden_states=True` returns, layers + 1 tensors of (1, positions,
      hidden): the embeddings, then the stream after each layer (transformers gives the last one after
      the final norm, so it is not read: the model's own output stands for it);
    final_input: (hidden,) what the final norm read at the last position (the stream after the last layer);
    logits: (vocab,) the model's output at the last position.
    Raises LensUnavailable when the norm and output layer do not give the model's output from
    `final_input`."""
    check = unembed(model, norm, final_input[None])[0].float()  # (vocab,)
    scale = max(1.0, float(logits.float().abs().max()))
    if float((check - logits.float()).abs().max()) > CHECK_RTOL * scale:
        raise LensUnavailable(
            "its final norm and output layer, applied to the last layer's output, do not give its own output "
            "(it computes its output in some other way)."
        )
    # (layers, hidden), where the norm's input was (a model spread over devices keeps each layer on its own)
    earlier = torch.stack([states[0, -1].to(final_input.device) for states in hidden_states[:-1]])
    rows = logits_to_probs(unembed(model, norm, earlier))  # (layers, vocab): embeddings, layer 1, ...
    return torch.cat([rows, logits_to_probs(logits)[None]]).cpu()  # (layers + 1, vocab)


def lens_layer_names(layers: int) -> tuple[str, ...]:
    """The lens's row names: the embeddings, then each layer, the last one the model's output."""
    return ("embeddings", *(f"layer {i}" for i in range(1, layers + 1)))


@dataclass(frozen=True)
class LogitLens:
    """What each layer would predict next, at the sequence's last position."""

    layers: tuple[str, ...]  # each row's name: "embeddings", "layer 1", ..., the last row the model's output
    probs: torch.Tensor  # (rows, vocab): each row's softmax over the whole vocabulary, fp32 on the CPU
    top: tuple[tuple[TokenProb, ...], ...]  # each row's most likely tokens, highest first

    @classmethod
    def of(cls, probs: torch.Tensor, texts: TokenTexts, k: int) -> LogitLens:
        """The lens from its rows' distributions (rows, vocab), with each row's `k` most likely tokens."""
        values, ids = torch.topk(probs, min(k, probs.shape[-1]), dim=-1)  # (rows, k), (rows, k)
        top = tuple(
            tuple(
                TokenProb(token_id, texts.text(token_id), prob)
                for token_id, prob in zip(row_ids, row_values, strict=True)
            )
            for row_ids, row_values in zip(ids.tolist(), values.tolist(), strict=True)
        )
        return cls(lens_layer_names(probs.shape[0] - 1), probs, top)

    @property
    def output(self) -> tuple[TokenProb, ...]:
        """The last row: the model's own most likely next tokens (what the page's top-k shows)."""
        return self.top[-1]
