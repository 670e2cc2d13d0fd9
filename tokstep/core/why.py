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

`WhyReader` reads the views again and again along one growing sequence (every token of a /generate
run, every step of a run file): it keeps the pass's KV cache between readings (`CarriedCache`), so each
reading runs step 1 on the tokens added since the last one only and step 2 on the newest, one token's
pass per step instead of the whole sequence. `why_this_token` is one reading with a fresh cache.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import Cache, PreTrainedModel

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


@dataclass
class CarriedCache:
    """The KV cache a reading leaves for the next one on the same sequence (`WhyReader`): `ids` are
    the tokens it holds. Empty (None) at first, and again whenever a reading cannot build on it.
    `none_returned`: the model returned no cache (RecurrentGemma), so later readings read the whole
    sequence in one pass, with no step 1."""

    ids: tuple[int, ...] = ()
    cache: Cache | None = None
    none_returned: bool = False

    def prefix_for(self, ids: Sequence[int]) -> tuple[Cache | None, int]:
        """The cache to read `ids` on and how many of them it holds: all but the last at most, since
        step 2 reads the last token itself. A sequence that does not go on from the held ids (an undo,
        another sequence, the same one again) starts over with no cache."""
        held = len(self.ids)
        if self.cache is None or held >= len(ids) or tuple(ids[:held]) != self.ids:
            self.ids, self.cache = (), None
            return None, 0
        return self.cache, held

    def keep(self, ids: Sequence[int], cache: Cache | None) -> None:
        """What a reading of `ids` left: the cache its pass returned (None: the model returns none)."""
        self.ids, self.cache = (tuple(ids), cache) if cache is not None else ((), None)
        self.none_returned = cache is None


@torch.inference_mode()
def read_next_token(
    model: PreTrainedModel,
    ids: Sequence[int],
    attention: bool = True,
    lens: bool = True,
    carried: CarriedCache | None = None,
) -> Reading:
    """The pass of the module docstring over `ids` (at least one). No other pass of `model` may run
    meanwhile when `attention` is on (it switches the model to eager attention for step 2). `lens`
    off skips the lens's arithmetic (the output layer on every layer's stream). With `carried`, the
    pass builds on the cache it holds and leaves its own there for the next reading."""
    ids = [int(i) for i in ids]
    device = model_device(model)
    cache, cached = carried.prefix_for(ids) if carried is not None else (None, 0)
    no_cache = carried is not None and carried.none_returned  # step 1 would give no cache to read on
    if len(ids) - 1 > cached and not no_cache:  # step 1: the tokens before the last that no cache holds yet
        prefix = model(input_ids=torch.tensor([ids[cached:-1]], device=device), cache=cache, use_cache=True,
                       logits_to_keep=1)  # fmt: skip
        cache = output_cache(prefix)
    feed = ids[-1:] if cache is not None else ids  # (T_new,): the last token, or all of them
    norm = final_norm(model) if lens else None
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
    if carried is not None:
        carried.keep(ids, output_cache(output))
    hidden_states = output.hidden_states  # layers + 1 of (1, T_new, hidden)
    layers = len(hidden_states) - 1
    probs, lens_unavailable = None, ""
    if not lens:
        lens_unavailable = "it was not asked for."
    elif norm is None:
        lens_unavailable = "no final norm was found among its modules."
    elif not reads:
        lens_unavailable = "its final norm did not run in the pass."
    else:
        try:
            probs = lens_probs(model, norm, hidden_states, reads[-1][0, -1], output.logits[0, -1])
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
    return Reading(layers, probs, weights, lens_unavailable, attention_unavailable)


@dataclass(frozen=True)
class WhyThisToken:
    """Layer by layer and where it looked, for the next token after `ids`. A view that is None says why
    in its note (one sentence for the page)."""

    ids: tuple[int, ...]
    lens: LogitLens | None
    attention: AttentionMap | None
    lens_note: str = ""
    attention_note: str = ""
    here: bool = True  # False: the model does not run in this process (ModelNotHere), so neither view can be read


class WhyReader:
    """Both views for the next token after each of a growing sequence's lengths, read in turn (the
    module docstring): `reader.read(ids)`, then `reader.read(ids + [next_id])`, ... Each reading
    builds on the KV cache the one before left, so it costs one token's pass where the sequence went
    on by one token, and nothing where it is the sequence read last (that reading again); any other
    sequence is read from its start. `lens` and `attention` choose the views (one left off costs
    nothing and says "it was not asked for"). Not for two threads at once."""

    def __init__(self, lm: LanguageModel, top_k: int = DEFAULT_TOP_K, lens: bool = True, attention: bool = True):
        self.lm = lm
        self.top_k = top_k
        self.reader = functools.partial(read_next_token, lens=lens, attention=attention, carried=CarriedCache())
        self.last: WhyThisToken | None = None

    def read(self, ids: Sequence[int]) -> WhyThisToken:
        """The next token after `ids` (at least one id), layer by layer (each row's `top_k` tokens) and
        where the last position looked. One pass, run by `lm.forward`; where the model is not in this
        process, both views are None and their notes say so."""
        ids = tuple(int(i) for i in ids)
        if not ids:
            raise ValueError("Reading why the model chose needs at least one token id.")
        if self.last is None or self.last.ids != ids:
            self.last = self._read(ids)
        return self.last

    def _read(self, ids: tuple[int, ...]) -> WhyThisToken:
        try:
            reading = self.lm.forward.inspect(ids, self.reader)
        except ModelNotHere as error:
            return WhyThisToken(ids, None, None, str(error), str(error), here=False)
        lens = LogitLens.of(reading.lens, self.lm.texts, self.top_k) if reading.lens is not None else None
        where = None
        if reading.attention is not None:
            names = attention_layer_names(reading.attention.shape[0], reading.layers)
            where = AttentionMap(names, reading.attention)
        lens_note = "" if lens is not None else f"{LENS_UNAVAILABLE} {reading.lens_unavailable}"
        attention_note = "" if where is not None else f"{ATTENTION_UNAVAILABLE} {reading.attention_unavailable}"
        return WhyThisToken(ids, lens, where, lens_note, attention_note)


def why_this_token(
    lm: LanguageModel, ids: Sequence[int], top_k: int = DEFAULT_TOP_K, attention: bool = True
) -> WhyThisToken:
    """The next token after `ids` (a sequence's ids, at least one), layer by layer (each row's `top_k`
    tokens) and, with `attention`, where the last position looked. One pass over the whole sequence,
    run by `lm.forward`."""
    return WhyReader(lm, top_k, attention=attention).read(ids)
