"""Packed linear layers compute what the layers they replace compute, and tokstep.load packs
the large ones: a packed model's steps equal the plain model's (`generate` on an unpacked copy)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.pytorch_utils import Conv1D

import tokstep
from tokstep.runtimes.packed_linear import PACK_MIN_ELEMENTS, PackedLinear, pack_linear_layers, packing_available

pytestmark = pytest.mark.skipif(not packing_available(), reason="this torch has no oneDNN")


def close_to_fp32_rounding(actual: torch.Tensor, expected: torch.Tensor, in_features: int) -> None:
    """Equal up to the rounding of a float32 dot product of `in_features` terms, whose terms are
    added in another order: relative error ~ in_features * 2^-24 of the terms' magnitudes."""
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=0, atol=in_features * 2**-24 * scale)


@torch.inference_mode()
def test_packed_linear_equals_nn_linear_and_gpt2_conv1d() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(96, 200)
    conv = Conv1D(200, 96)  # GPT-2's layer: weight stored (in, out)
    nn.init.normal_(conv.weight)
    nn.init.normal_(conv.bias)
    hidden = torch.randn(3, 7, 96)
    for layer, weight in ((linear, linear.weight), (conv, conv.weight.t())):
        packed = PackedLinear(weight, layer.bias)
        assert (packed.in_features, packed.out_features) == (96, 200)
        for inputs in (hidden, hidden[:, -1:], hidden[0]):  # a batch, a strided slice, 2-D
            close_to_fp32_rounding(packed(inputs), layer(inputs), 96)


def test_only_fp32_layers_of_at_least_the_threshold_are_packed() -> None:
    model = nn.Sequential(nn.Linear(64, 64), nn.Sequential(nn.Linear(64, 32, bias=False)), nn.Linear(8, 8))
    assert pack_linear_layers(model, min_elements=64 * 32) == 2
    assert [type(layer).__name__ for layer in (model[0], model[1][0], model[2])] == [
        "PackedLinear",
        "PackedLinear",
        "Linear",
    ]
    assert model[1][0].bias is None

    half = nn.Sequential(nn.Linear(64, 64).to(torch.bfloat16))
    assert pack_linear_layers(half, min_elements=0) == 0


def tiny_tied_gpt2() -> GPT2LMHeadModel:
    """A tiny GPT-2 whose output layer is the token embedding (as GPT-2 and the bundled model)."""
    torch.manual_seed(7)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=500, n_positions=64, n_embd=48, n_layer=2, n_head=2)).eval()
    with torch.no_grad():
        model.transformer.wte.weight.mul_(30.0)  # peaked distributions: clear-cut greedy choices
    return model


@torch.inference_mode()
def test_a_packed_tied_model_generates_what_the_plain_one_does(gpt2_tokenizer) -> None:
    plain = tiny_tied_gpt2()
    packed = copy.deepcopy(plain)
    assert packed.lm_head.weight is packed.transformer.wte.weight
    # Every linear layer of the tiny model, output layer included (the real threshold packs none).
    assert pack_linear_layers(packed, min_elements=0) == 2 * 4 + 1
    assert isinstance(packed.lm_head, PackedLinear)
    assert isinstance(packed.transformer.wte, nn.Embedding)  # the input side keeps the shared weight

    ids = torch.tensor([[5, 77, 123, 9, 400]])
    options = dict(do_sample=False, max_new_tokens=20, attention_mask=torch.ones_like(ids), pad_token_id=0)
    assert packed.generate(ids, **options).tolist() == plain.generate(ids, **options).tolist()
    probs_plain = torch.softmax(plain(ids).logits, dim=-1)
    probs_packed = torch.softmax(packed(ids).logits, dim=-1)
    torch.testing.assert_close(probs_packed, probs_plain, rtol=0, atol=1e-5)

    lm = tokstep.from_objects("tiny tied, packed", packed, gpt2_tokenizer)
    assert lm.vocab_size == 500


def test_load_packs_large_layers_and_steps_equal_the_plain_model(tiny_model_dir) -> None:
    # Packing is for the CPU: on a GPU machine too, these two load there.
    packed = tokstep.load(str(tiny_model_dir), device_map="cpu")
    plain = tokstep.load(str(tiny_model_dir), device_map="cpu", pack_weights=False)
    # The tiny model's output layer (32 x 50,257) is over the threshold; its blocks are not.
    assert plain.model.lm_head.weight.numel() >= PACK_MIN_ELEMENTS
    assert isinstance(packed.model.lm_head, PackedLinear)
    assert isinstance(plain.model.lm_head, nn.Linear)
    assert not any(isinstance(m, PackedLinear) for m in packed.model.transformer.modules())
    assert packed.vocab_size == plain.vocab_size == 50257

    prompt = "Once upon a time, generative models"
    ids = tokstep.tokenize(plain.tokenizer, prompt)
    with torch.inference_mode():
        reference = plain.model.generate(
            torch.tensor([ids]), do_sample=False, max_new_tokens=25, pad_token_id=plain.tokenizer.eos_token_id
        )[0, len(ids) :].tolist()
    steps = list(tokstep.generate_steps(packed, prompt, max_new_tokens=25, top_k=5))
    assert [step.token_id for step in steps] == reference

    plain_steps = list(tokstep.generate_steps(plain, prompt, max_new_tokens=25, top_k=5))
    for ours, theirs in zip(steps, plain_steps, strict=True):
        assert [t.token_id for t in ours.top] == [t.token_id for t in theirs.top]
        for a, b in zip(ours.top, theirs.top, strict=True):
            assert a.prob == pytest.approx(b.prob, abs=1e-5)


def test_a_packed_model_moved_to_another_dtype_or_device_unpacks_its_weights_unchanged(tiny_model_dir) -> None:
    # As `lm.model.to("cuda")` or `.half()` after loading on a CPU: oneDNN's packed layout is for
    # fp32 on the CPU only, so a moved layer must multiply by a plain weight again.
    packed = tokstep.load(str(tiny_model_dir), device_map="cpu")
    plain = tokstep.load(str(tiny_model_dir), device_map="cpu", pack_weights=False)
    head = packed.model.lm_head
    assert isinstance(head, PackedLinear)
    assert torch.equal(head.unpacked_weight(), plain.model.lm_head.weight)

    packed.model.double()  # another dtype, on the CPU: the one move this machine can run
    plain.model.double()
    assert head.packed_weight is None and head.weight.dtype == torch.float64
    prompt = "Once upon a time, generative models"
    moved = list(tokstep.generate_steps(packed, prompt, max_new_tokens=8, top_k=5))
    expected = list(tokstep.generate_steps(plain, prompt, max_new_tokens=8, top_k=5))
    assert [(s.token_id, s.prob, [t.prob for t in s.top]) for s in moved] == [
        (s.token_id, s.prob, [t.prob for t in s.top]) for s in expected
    ]


@torch.inference_mode()
def test_a_moved_packed_layer_takes_its_bias_along() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(96, 200)
    layer = PackedLinear(linear.weight, linear.bias)
    hidden = torch.randn(3, 96, dtype=torch.float64)
    assert torch.equal(layer.double()(hidden), linear.double()(hidden))
    layer.to("meta")  # another device ("meta" keeps shapes only)
    assert (layer.weight.device.type, layer.bias.device.type) == ("meta", "meta")
