"""Why this token? One extra pass that reads both "layer by layer" and "where it looked".

Both views are about the same distribution: the next token's, after the current sequence, computed
at its last position (the newest token, or the prompt's last one before any step): the one the page's
top-k shows and Step would choose from. `why_this_token(lm, ids)` reads them in one pass over the
model, run where the model's passes run (`lm.forward.inspect`, tokstep.core.forward), never on a
step's path:

  1. the sequence but its last token, read as a step reads it (the model's usual attention, into a
     fresh KV cache of this pass's own);
  2. the last token on top of that cache, on eager attention (tokstep.core.attention), asking for
     the hidden states and the attention weights: the next token's logits, the stream after each
     layer at the last position (tokstep.core.lens), and each attention layer's weights from the
     last position's one query (a row per layer, however long the sequence). A forward pre-hook
     on the final norm records what it read, which the lens checks itself against.

A model that returns no cache (RecurrentGemma keeps its state inside itself) reads the whole sequence
in step 2 instead, as its steps do; so does a one-token sequence. Where the model does not run in this
process (a serving engine, ZeroGPU), neither view is available, and both say so.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from tokstep.core.attention import AttentionMap, attention_layer_names, eager_attention, last_query_weights
from tokstep.core.forward import ModelNotHere, model_device, output_cache
from tokstep.core.lens import LensUnavailable, LogitLens, final_norm, lens_probs
from tokstep.core.model import LanguageModel

DEFAULT_TOP_K = 5  # the lens's tokens per layer
LENS_UNAVAILABLE = "Layer by layer is not available for this model:"
ATTENTION_UNAVAILABLE = "Where it looked is not available for this model:"


@dataclass(frozen=True)
class Reading:
    """What the pass read, on the CPU; a view it could not read is None, with the reason."""

    layers: int  # the model's layers (its hidden states, less the embeddings)
    lens: torch.Tensor | None  # (layers + 1, vocab): tokstep.core.lens.lens_probs
    attention: torch.Tensor | None  # (attention layers, T): tokstep.core.attention.last_query_weights
    lens_unavailable: str = ""  # why `lens` is None: the end of a sentence ("its ... .")
    attention_unavailable: str = ""


@torch.inference_mode()
def read_next_token(model: PreTrainedModel, ids: Sequence[int], attention: bool = True) -> Reading:
    """The pass of the module docstring over `ids` (at least one). No other pass of `model` may run
    meanwhile when `attention` is on (it switches the model to eager attention for step 2)."""
    ids = [int(i) for i in ids]
    device = model_device(model)
    cache = None
    if len(ids) > 1:
        prefix = model(input_ids=torch.tensor([ids[:-1]], device=device), use_cache=True, logits_to_keep=1)
        cache = output_cache(prefix)
    feed = ids[-1:] if cache is not None else ids  # (T_new,): the last token, or all of them
    norm = final_norm(model)
    reads: list[torch.Tensor] = []  # what the final norm read, each (1, T_new, hidden)
    thread = threading.get_ident()  # another runtime's pass on the same model is not this pass

    def record(module: torch.nn.Module, args: tuple) -> None:
        if threading.get_ident() == thread and args:
            reads.append(args[0])

    hook = norm.register_forward_pre_hook(record) if norm is not None else None
    try:
        with eager_attention(model) if attention else contextlib.nullcontext(False):
            output = model(
                input_ids=torch.tensor([feed], device=device), cache=cache, use_cache=True,
                output_hidden_states=True, output_attentions=attention, logits_to_keep=1,
            )  # fmt: skip
    finally:
        if hook is not None:
            hook.remove()
    hidden_states = output.hidden_states  # layers + 1 of (1, T_new, hidden)
    layers = len(hidden_states) - 1
    lens, lens_unavailable = None, ""
    if norm is None:
        lens_unavailable = "no final norm was found among its modules."
    elif not reads:
        lens_unavailable = "its final norm did not run in the pass."
    else:
        try:
            lens = lens_probs(model, norm, hidden_states, reads[-1][0, -1], output.logits[0, -1])
        except LensUnavailable as error:
            lens_unavailable = str(error)
    weights, attention_unavailable = None, ""
    attentions = getattr(output, "attentions", None)  # attention layers of (1, heads, T_new, keys)
    if not attention:
        attention_unavailable = "it was not asked for."
    elif not attentions or any(layer is None for layer in attentions):
        attention_unavailable = (
            "its passes return no attention weights (a state-space model such as Mamba has no attention layers)."
        )
    else:
        weights = last_query_weights(attentions, len(ids))
    return Reading(layers, lens, weights, lens_unavailable, attention_unavailable)


@dataclass(frozen=True)
class WhyThisToken:
    """Layer by layer and where it looked, for the next token after `ids`. A view that is None says why
    in its note (one sentence for the page)."""

    ids: tuple[int, ...]
    lens: LogitLens | None
    attention: AttentionMap | None
    lens_note: str = ""
    attention_note: str = ""


def why_this_token(
    lm: LanguageModel, ids: Sequence[int], top_k: int = DEFAULT_TOP_K, attention: bool = True
) -> WhyThisToken:
    """The next token after `ids` (a sequence's ids, at least one), layer by layer (each row's `top_k`
    tokens) and, with `attention`, where the last position looked. One pass, run by `lm.forward`."""
    ids = tuple(int(i) for i in ids)
    if not ids:
        raise ValueError("why_this_token needs at least one token id.")
    try:
        reading = lm.forward.inspect(ids, functools.partial(read_next_token, attention=attention))
    except ModelNotHere as error:
        return WhyThisToken(ids, None, None, str(error), str(error))
    lens = LogitLens.of(reading.lens, lm.texts, top_k) if reading.lens is not None else None
    where = None
    if reading.attention is not None:
        where = AttentionMap(attention_layer_names(reading.attention.shape[0], reading.layers), reading.attention)
    lens_note = "" if lens is not None else f"{LENS_UNAVAILABLE} {reading.lens_unavailable}"
    attention_note = "" if where is not None else f"{ATTENTION_UNAVAILABLE} {reading.attention_unavailable}"
    return WhyThisToken(ids, lens, where, lens_note, attention_note)
