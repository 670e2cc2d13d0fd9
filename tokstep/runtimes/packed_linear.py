"""Linear layers whose weights oneDNN lays out for the CPU once, at load, instead of at every call.

On a CPU, `F.linear` hands MKL a plain (out, in) matrix, and MKL re-packs panels of it into its
kernel's blocked layout on every call. oneDNN (which ships inside torch) can do that packing once:
`torch.ops.mkldnn._reorder_linear_weight` returns the weight in the blocked layout and
`torch.ops.mkldnn._linear_pointwise` multiplies by it. torch's own compiler does exactly this when
it freezes a model for CPU inference; we do it without compiling, for the layers where it pays.

Measured on the 2-core AMD EPYC (see docs/performance.md, `python -m bench.packing`), per layer:
GPT-2's output layer (768 x 50,257) 1.4x faster for one sequence and 2.5x for a batch of 30, its MLP
and attention input layers 1.2-1.7x. Layers under about a million weights get slower (oneDNN's
fixed cost per call is larger than the packing it saves), so they stay as they are.

The values are the model's own; only the order of the additions in each dot product changes, so
logits move by float32 rounding (about 1e-6 relative) and the same code gives the same numbers on
every path (`model.generate`, tokstep's steps, batched or not), since they all call these modules.

A packed layer keeps the very parameters of the layer it replaces: the same `weight` Parameter
object, in its own layout ((out, in) for nn.Linear, (in, out) for transformers' Conv1D), and the same
`bias`, under the same names. That is what everything but the multiplication reads: `state_dict()`
and `save_pretrained` (same keys, shapes and values as the unpacked model, so a packed model saves
and loads back as an ordinary one), tied embeddings (the output layer's weight stays the token
embedding's, the same object), PEFT, and model code that reads `layer.weight` (Mamba's
`lm_head.weight.dtype`, its `dt_proj.weight @ ...`). The packed copy is a plain attribute beside it.

The memory this costs: the original weight is kept beside its packed copy, so each packed layer's
weight is held twice. Measured on GPT-2-small's shape (`GPT2LMHeadModel(GPT2Config())`, random
weights, 124M parameters, 498 MB in fp32; RSS after a first forward pass and malloc_trim): the
default threshold packs 37 layers (c_attn, c_fc and the MLP's c_proj of the 12 blocks, and the
output layer), whose packed copies hold 116.5M weights, 466 MB (oneDNN pads the output layer's
50,257 rows a little: 160 MB for its 154 MB). The process's RSS goes from 914 MB unpacked to
1,389 MB packed, +475 MB. When packed layers dropped their weights, the blocks' plain weights were
freed and only the output layer's copy was extra (tied to the token embedding, which kept the
plain one): +164 MB. Keeping the weights readable costs 311 MB more on this model, 62% of its
498 MB. (Without malloc_trim both read about 150 MB higher, +618 and +307 MB: glibc keeps the heap
that the blocks' packing used for temporaries, (out, in) copies of Conv1D's (in, out) weights.)

Packing is a serving-side step for inference only. The packed copy is made once, from the weight's
values at packing time: a weight changed in place afterwards (`weight.mul_()`, `copy_()`, loading a
state dict into the packed model, an optimizer's step, `resize_token_embeddings`) is not seen by the
packed copy, and the layer keeps multiplying by the old values; pack after the weights are final.
A forward pass that autograd records (gradients on, and the input or a parameter requiring
them: training, fine-tuning) multiplies by the plain weight, as the replaced layer would: oneDNN's
operator has no backward, so gradients through the packed copy would be silently missing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

# Smallest weight (in elements) worth packing: GPT-2's 768 x 768 layer (590k) is slower packed
# for one sequence, its 768 x 2,304 one (1.8M) faster at every batch size measured.
PACK_MIN_ELEMENTS = 1 << 20


def packing_available() -> bool:
    """Whether this torch has oneDNN and the two operators packing needs."""
    ops = torch.ops.mkldnn
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(ops, "_reorder_linear_weight")
        and hasattr(ops, "_linear_pointwise")
    )


class PackedLinear(nn.Module):
    """`y = x @ W.T + b`, multiplied by a copy of W in oneDNN's blocked layout (for inference).

    `weight` and `bias` are the replaced layer's own Parameters (not copies), registered under the
    same names: `weight` is (out_features, in_features) as nn.Linear stores it, or, with
    `in_out=True`, (in_features, out_features) as transformers' Conv1D (GPT-2) stores it. Keeps
    `in_features` and `out_features` as nn.Linear does. The packed copy is a plain attribute, not
    in `state_dict()`; it is made once, so later in-place changes to `weight` do not reach it.

    Moved off the CPU or to another dtype (`model.to("cuda")`, `model.half()`), the layer drops the
    packed copy (oneDNN's packed layout is for fp32 on the CPU only) and from then on multiplies by
    its moved `weight` as the replaced layer does.
    """

    def __init__(self, weight: nn.Parameter, bias: nn.Parameter | None, *, in_out: bool = False) -> None:
        super().__init__()
        self.in_out = in_out  # whether `weight` is (in, out), Conv1D's layout
        self.in_features, self.out_features = weight.shape if in_out else weight.shape[::-1]
        self.weight = weight  # the same Parameter object: tied weights stay tied, state_dict unchanged
        self.bias = bias
        self.packed_weight: torch.Tensor | None = self._pack()

    def _pack(self) -> torch.Tensor:
        """The weight's values in oneDNN's blocked layout, an opaque tensor of (out, in) weights."""
        # The operator takes the (out, in) matrix; a Conv1D weight is transposed (a temporary copy).
        out_in = self.weight.detach().t() if self.in_out else self.weight.detach()
        return torch.ops.mkldnn._reorder_linear_weight(out_in.contiguous())

    @classmethod
    def of(cls, layer: nn.Linear | Conv1D) -> PackedLinear:
        """The packed replacement for an nn.Linear or a Conv1D, holding that layer's parameters."""
        return cls(layer.weight, layer.bias, in_out=isinstance(layer, Conv1D))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        # hidden: (..., in_features) -> (..., out_features); both paths take any leading dims
        if self.packed_weight is None or self._recorded_by_autograd(hidden):
            weight = self.weight.t() if self.in_out else self.weight  # (out, in), a view
            return F.linear(hidden, weight, self.bias)
        return torch.ops.mkldnn._linear_pointwise(hidden, self.packed_weight, self.bias, "none", [], "")

    def _recorded_by_autograd(self, hidden: torch.Tensor) -> bool:
        # True in a training or fine-tuning pass (PEFT adapters over a frozen base included), where
        # the gradient must flow; false under torch.no_grad / inference_mode, as generate and tokstep run.
        if not torch.is_grad_enabled():
            return False
        return hidden.requires_grad or self.weight.requires_grad or (self.bias is not None and self.bias.requires_grad)

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> PackedLinear:
        # nn.Module.to(), .cuda(), .half() ... all come here with `fn`, the move of one tensor; the
        # parameters move as any module's do, the packed copy (not a parameter) is not touched.
        super()._apply(fn, recurse)
        if self.weight.device.type != "cpu" or self.weight.dtype != torch.float32:
            self.packed_weight = None
        return self

    def __getstate__(self) -> dict[str, Any]:
        # copy.deepcopy and pickle: oneDNN's packed tensor is opaque (it has no storage to copy or
        # save), so the state goes without it and the copy packs its own weight again.
        state = self.__dict__.copy()
        state["packed_weight"] = self.packed_weight is not None  # whether to pack again
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.packed_weight = self._pack() if self.packed_weight and packing_available() else None

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def _packable(layer: nn.Module) -> bool:
    """Whether the layer is a plain fp32 CPU linear layer (nn.Linear, or GPT-2's Conv1D)."""
    if getattr(layer, "_hf_hook", None) is not None:  # accelerate moves its weights around
        return False
    if not isinstance(layer, (nn.Linear, Conv1D)):
        return False
    return layer.weight.device.type == "cpu" and layer.weight.dtype == torch.float32


def pack_linear_layers(model: nn.Module, min_elements: int = PACK_MIN_ELEMENTS) -> int:
    """Replace the model's fp32 CPU linear layers of at least `min_elements` weights by PackedLinear.

    Returns how many were replaced (0 on a GPU, in half precision, or without oneDNN). Each packed
    layer keeps the replaced layer's `weight` and `bias` Parameters, so `state_dict()` is unchanged
    and a weight another module shares (an output layer tied to the token embedding) stays shared;
    the packed copy comes on top (see the module docstring for the memory this costs).
    """
    if not packing_available():
        return 0
    replaced = 0
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if not _packable(child) or child.weight.numel() < min_elements:
                continue
            setattr(parent, child_name, PackedLinear.of(child))
            replaced += 1
    return replaced
