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
"""

from __future__ import annotations

from collections.abc import Callable

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
    """`y = x @ W.T + b` with W held in oneDNN's blocked layout (inference only: no gradient).

    Keeps `in_features` and `out_features` as nn.Linear does. The packed weight is a plain
    attribute, not a parameter: it is not in `state_dict()`, and the layer is not saved.

    Moved off the CPU or to another dtype (`model.to("cuda")`, `model.half()`), the layer first
    reads its weight back into a plain (out, in) parameter, the same values, and from then on
    multiplies as nn.Linear does: oneDNN's packed layout is for fp32 on the CPU only.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        # weight: (out_features, in_features), as nn.Linear stores it
        self.out_features, self.in_features = weight.shape
        self.weight_nbytes = weight.numel() * weight.element_size()
        self.packed_weight: torch.Tensor | None = torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous())
        self.register_parameter("weight", None)  # the plain weight, once the layer is moved (see _apply)
        # A buffer, so that moving the model moves it; not persistent, as before.
        self.register_buffer("bias", None if bias is None else bias.detach(), persistent=False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        # hidden: (..., in_features) -> (..., out_features); the operator takes any leading dims
        if self.packed_weight is None:
            return F.linear(hidden, self.weight, self.bias)
        return torch.ops.mkldnn._linear_pointwise(hidden, self.packed_weight, self.bias, "none", [], "")

    def unpacked_weight(self) -> torch.Tensor:
        """The plain (out, in) weight read back through the packed one: I @ W.T is W.T exactly,
        since each of its dot products adds one weight times 1.0 to zeros."""
        if self.packed_weight is None:
            return self.weight.detach()
        identity = torch.eye(self.in_features)  # (in, in)
        with torch.no_grad():
            rows = torch.ops.mkldnn._linear_pointwise(identity, self.packed_weight, None, "none", [], "")  # (in, out)
        return rows.t().contiguous()

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> PackedLinear:
        # nn.Module.to(), .cuda(), .half() ... all come here with `fn`, the move of one tensor.
        if self.packed_weight is not None:
            probe = fn(torch.zeros(()))  # where, and in what dtype, this move puts a float tensor
            if probe.device.type != "cpu" or probe.dtype != torch.float32:
                self.weight = nn.Parameter(self.unpacked_weight(), requires_grad=False)
                self.packed_weight = None
        return super()._apply(fn, recurse)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def _weight_out_in(layer: nn.Module) -> torch.Tensor | None:
    """The layer's weight as (out, in), or None when it is not a plain fp32 CPU linear layer."""
    if getattr(layer, "_hf_hook", None) is not None:  # accelerate moves its weights around
        return None
    if isinstance(layer, nn.Linear):
        weight = layer.weight
    elif isinstance(layer, Conv1D):  # GPT-2's linear layers store (in, out)
        weight = layer.weight.t()
    else:
        return None
    if weight.device.type != "cpu" or weight.dtype != torch.float32:
        return None
    return weight


def pack_linear_layers(model: nn.Module, min_elements: int = PACK_MIN_ELEMENTS) -> int:
    """Replace the model's fp32 CPU linear layers of at least `min_elements` weights by PackedLinear.

    Returns how many were replaced (0 on a GPU, in half precision, or without oneDNN). A weight
    that another module shares (an output layer tied to the token embedding) stays where it is
    for that module; the packed layer holds its own copy.
    """
    if not packing_available():
        return 0
    replaced = 0
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            weight = _weight_out_in(child)
            if weight is None or weight.numel() < min_elements:
                continue
            setattr(parent, child_name, PackedLinear(weight, child.bias))
            replaced += 1
    return replaced
