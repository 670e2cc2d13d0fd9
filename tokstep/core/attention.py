"""Where it looked: how much the last position's attention went to each earlier token.

The next token's distribution is computed at the sequence's last position (the newest token, or the
prompt's last one before any step). In every attention layer that position's query is compared with
the keys of every position up to it, and a softmax turns the scores into weights that sum to 1 per
head. `AttentionMap` holds those weights averaged over the layer's heads: one row per attention layer,
one column per position of the sequence. Averaging is a summary, not an explanation: a head can look
at a token and do little with what it read, and what a layer reads was already mixed by the layers
below it.

The weights come from the model itself, which returns them only from its "eager" attention (the
plain softmax; sdpa and flash kernels never form them). `eager_attention(model)` switches a model to
it for one pass with transformers' public `set_attn_implementation` and always switches it back, so
the caller must make sure no other pass of that model runs meanwhile (tokstep.core.forward's
`Forward.inspect` does). The page's steps never pass through here.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

EAGER = "eager"


def attention_implementation(model: PreTrainedModel) -> str | None:
    """The attention implementation the model's passes use now (transformers keeps it on the config)."""
    return model.config._attn_implementation


@contextmanager
def eager_attention(model: PreTrainedModel) -> Iterator[bool]:
    """Run the body with `model` on eager attention (which returns the weights), then restore the
    implementation it had, also when the body raises. Yields whether the model is on eager attention
    (False: it cannot switch; some models return the weights anyway, e.g. Falcon). Switching changes
    the config the model's attention layers read at each pass: no other pass may run meanwhile."""
    before = attention_implementation(model)
    if before == EAGER:
        yield True
        return
    try:
        model.set_attn_implementation(EAGER)  # logs a line, and changes nothing, where it cannot
        switched = attention_implementation(model) == EAGER
    except (ValueError, ImportError):  # a model whose attention cannot be eager
        switched = False
    try:
        yield switched
    finally:
        if attention_implementation(model) != before:
            model.set_attn_implementation(before)


def last_query_weights(attentions: Sequence[torch.Tensor], length: int) -> torch.Tensor:
    """Each attention layer's weights from the last position's query, averaged over its heads, placed
    at the positions of a sequence of `length`: (layers, length), fp32, on the CPU.

    `attentions`: what a pass with `output_attentions=True` returns, one (1, heads, queries, keys)
    tensor per attention layer, the last query being the sequence's last position. A layer whose cache
    keeps only a window of recent positions (sliding-window attention) has fewer keys than positions:
    its keys are the most recent ones, so they are placed at the end; the positions before them got
    nothing."""
    rows = torch.zeros(len(attentions), length)  # (layers, T)
    for layer, weights in enumerate(attentions):
        last = weights[0, :, -1, :].float().mean(dim=0)  # (keys,): the last query, averaged over heads
        keys = last.shape[-1]
        if keys > length:
            raise ValueError(f"An attention layer has {keys} keys for a sequence of {length} positions.")
        rows[layer, length - keys :] = last.cpu()
    return rows


@dataclass(frozen=True)
class AttentionMap:
    """Where the sequence's last position looked, layer by layer, averaged over each layer's heads."""

    layers: tuple[str, ...]  # each row's name: "layer 3" ("attention layer 2" where only some layers attend)
    # (layers, T): row r, column j: the share of layer r's attention (from the last position's query,
    # averaged over heads) that went to position j. Each row sums to 1, or less where the model's heads
    # can attend to no token at all (attention sinks, as in gpt-oss): that rest is `elsewhere`.
    weights: torch.Tensor

    @property
    def length(self) -> int:
        """Positions of the sequence (the last one is the query's)."""
        return int(self.weights.shape[-1])

    @property
    def average(self) -> torch.Tensor:
        """All layers together: the rows' mean, (T,)."""
        return self.weights.mean(dim=0)

    @property
    def elsewhere(self) -> torch.Tensor:
        """Each layer's share that went to no token (an attention sink), (layers,): 0 for most models."""
        return (1.0 - self.weights.sum(dim=-1)).clamp(min=0.0)


def attention_layer_names(count: int, layers: int) -> tuple[str, ...]:
    """Row names for `count` attention layers in a model of `layers` layers: "layer i" when every layer
    attends, else "attention layer i" (a hybrid model's other layers are recurrent or convolutional)."""
    if count == layers:
        return tuple(f"layer {i}" for i in range(1, count + 1))
    return tuple(f"attention layer {i}" for i in range(1, count + 1))
