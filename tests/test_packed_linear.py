"""Packed linear layers compute what the layers they replace compute, keep those layers' own
parameters (so a packed model's state_dict, saved files and tied weights are the plain model's),
and the app's runtime packs the large ones: a packed model's steps equal the plain model's
(`generate` on an unpacked copy)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, PreTrainedModel
from transformers.pytorch_utils import Conv1D

import tokstep
from tokstep.runtimes.in_process import InProcessRuntime
from tokstep.runtimes.packed_linear import PACK_MIN_ELEMENTS, PackedLinear, pack_linear_layers, packing_available

pytestmark = pytest.mark.skipif(not packing_available(), reason="this torch has no oneDNN")

VOCAB = 500  # the tiny models' vocabulary: their ids need no tokenizer
IDS = torch.tensor([[5, 77, 123, 9, 400, 31, 250]])  # (1, 7) token ids below VOCAB


def close_to_fp32_rounding(actual: torch.Tensor, expected: torch.Tensor, in_features: int) -> None:
    """Equal up to the rounding of a float32 dot product of `in_features` terms, whose terms are
    added in another order: relative error ~ in_features * 2^-24 of the terms' magnitudes."""
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=0, atol=in_features * 2**-24 * scale)


def logits_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """A whole model's logits, packed against plain: each packed layer adds float32 rounding of its
    own (~1e-6 relative), and the layers after it carry it on; 1e-5 of the logits' scale bounds that."""
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5 * expected.abs().max().item())


def state_dict_layout(model: nn.Module) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    return {name: (tuple(value.shape), value.dtype) for name, value in model.state_dict().items()}


@torch.inference_mode()
def test_packed_linear_equals_nn_linear_and_gpt2_conv1d() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(96, 200)
    conv = Conv1D(200, 96)  # GPT-2's layer: weight stored (in, out)
    nn.init.normal_(conv.weight)
    nn.init.normal_(conv.bias)
    hidden = torch.randn(3, 7, 96)
    for layer in (linear, conv):
        packed = PackedLinear.of(layer)
        assert (packed.in_features, packed.out_features) == (96, 200)
        # The layer's own parameters, in their own layout: nothing copied, nothing transposed.
        assert packed.weight is layer.weight and packed.bias is layer.bias
        assert dict(packed.named_parameters()).keys() == dict(layer.named_parameters()).keys()
        assert packed.state_dict().keys() == layer.state_dict().keys()
        assert packed.packed_weight is not None
        assert repr(packed) == "PackedLinear(in_features=96, out_features=200, bias=True)"
        for inputs in (hidden, hidden[:, -1:], hidden[0]):  # a batch, a strided slice, 2-D
            close_to_fp32_rounding(packed(inputs), layer(inputs), 96)


def test_only_fp32_layers_of_at_least_the_threshold_are_packed() -> None:
    model = nn.Sequential(nn.Linear(64, 64), nn.Sequential(nn.Linear(64, 32, bias=False)), nn.Linear(8, 8))
    before = state_dict_layout(model)
    assert pack_linear_layers(model, min_elements=64 * 32) == 2
    assert [type(layer).__name__ for layer in (model[0], model[1][0], model[2])] == [
        "PackedLinear",
        "PackedLinear",
        "Linear",
    ]
    assert model[1][0].bias is None
    assert state_dict_layout(model) == before

    half = nn.Sequential(nn.Linear(64, 64).to(torch.bfloat16))
    assert pack_linear_layers(half, min_elements=0) == 0


def tiny_gpt2(tied: bool = True) -> GPT2LMHeadModel:
    """A tiny GPT-2, its output layer the token embedding (as GPT-2 and the bundled model) or not."""
    torch.manual_seed(7)
    config = GPT2Config(
        vocab_size=VOCAB, n_positions=64, n_embd=48, n_layer=2, n_head=2, tie_word_embeddings=tied,
        bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(30.0)  # peaked distributions: clear-cut greedy choices
    return model


def tiny_ssm(model_type: str) -> PreTrainedModel:
    """A tiny Mamba or Mamba-2 (2 layers, hidden size 64), its output layer its own (untied)."""
    torch.manual_seed(3)
    settings = {"mamba": {}, "mamba2": {"num_heads": 8, "head_dim": 16, "n_groups": 1, "chunk_size": 16}}
    config = AutoConfig.for_model(
        model_type, vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, state_size=16, tie_word_embeddings=False,
        bos_token_id=0, eos_token_id=0, pad_token_id=0, **settings[model_type],
    )  # fmt: skip
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(40.0)  # as tests/conftest.py's tiny GPT-2: greedy choices far from ties
    return model


def greedy(model: PreTrainedModel, new_tokens: int = 12) -> tuple[list[int], torch.Tensor]:
    """Greedy continuation of IDS, with each step's logits (new_tokens, VOCAB): the prompt's pass,
    then one cached step per token."""
    out = model.generate(
        IDS, attention_mask=torch.ones_like(IDS), do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
        pad_token_id=0, output_logits=True, return_dict_in_generate=True,
    )  # fmt: skip
    return out.sequences[0, IDS.shape[1] :].tolist(), torch.cat(out.logits)


@pytest.mark.parametrize("model_type", ["mamba", "mamba2"])
@torch.inference_mode()
def test_a_packed_mamba_steps_as_the_plain_one(model_type: str) -> None:
    # transformers' Mamba reads `dt_proj.weight @ ...` and Mamba-2 `lm_head.weight.dtype` in
    # their forward: a packed layer must keep a readable weight.
    plain = tiny_ssm(model_type)
    packed = copy.deepcopy(plain)
    linears = sum(isinstance(module, nn.Linear) for module in plain.modules())
    assert pack_linear_layers(packed, min_elements=1) == linears > 2  # the output layer and the mixers'
    assert isinstance(packed.lm_head, PackedLinear)
    assert packed.lm_head.weight.dtype == torch.float32

    logits_close(packed(IDS).logits, plain(IDS).logits)
    tokens, step_logits = greedy(packed)
    plain_tokens, plain_step_logits = greedy(plain)
    assert tokens == plain_tokens
    logits_close(step_logits, plain_step_logits)


@pytest.mark.parametrize("model_type", ["gpt2", "mamba"])
@torch.inference_mode()
def test_a_packed_untied_model_saves_what_the_plain_one_saves(model_type: str, tmp_path: Path) -> None:
    plain = tiny_gpt2(tied=False) if model_type == "gpt2" else tiny_ssm(model_type)
    packed = copy.deepcopy(plain)
    assert pack_linear_layers(packed, min_elements=1) > 2
    assert isinstance(packed.lm_head, PackedLinear)
    # Same keys, shapes and values: packing changes no parameter.
    assert state_dict_layout(packed) == state_dict_layout(plain)
    for name, value in packed.state_dict().items():
        assert torch.equal(value, plain.state_dict()[name]), name

    packed.save_pretrained(tmp_path)
    assert load_file(tmp_path / "model.safetensors").keys() == plain.state_dict().keys()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert not any(isinstance(module, PackedLinear) for module in loaded.modules())
    # Loaded unpacked, it is the plain model exactly, and the packed one to float32 rounding.
    assert torch.equal(loaded(IDS).logits, plain(IDS).logits)
    logits_close(packed(IDS).logits, loaded(IDS).logits)


@torch.inference_mode()
def test_a_packed_tied_model_stays_tied_and_generates_what_the_plain_one_does(gpt2_tokenizer) -> None:
    plain = tiny_gpt2()
    packed = copy.deepcopy(plain)
    assert packed.lm_head.weight is packed.transformer.wte.weight
    # Every linear layer of the tiny model, output layer included (the real threshold packs none).
    assert pack_linear_layers(packed, min_elements=0) == 2 * 4 + 1
    assert isinstance(packed.lm_head, PackedLinear)
    assert isinstance(packed.transformer.wte, nn.Embedding)
    assert packed.lm_head.weight is packed.get_input_embeddings().weight  # still one Parameter
    assert state_dict_layout(packed) == state_dict_layout(plain)

    ids = IDS[:, :5]
    options = dict(do_sample=False, max_new_tokens=20, attention_mask=torch.ones_like(ids), pad_token_id=0)
    assert packed.generate(ids, **options).tolist() == plain.generate(ids, **options).tolist()
    probs_plain = torch.softmax(plain(ids).logits, dim=-1)
    probs_packed = torch.softmax(packed(ids).logits, dim=-1)
    torch.testing.assert_close(probs_packed, probs_plain, rtol=0, atol=1e-5)

    lm = tokstep.from_objects("tiny tied, packed", packed, gpt2_tokenizer)
    assert lm.vocab_size == VOCAB


@torch.inference_mode()
def test_a_packed_gpt2_moved_to_another_dtype_computes_as_the_plain_one_there() -> None:
    plain = tiny_gpt2()
    packed = copy.deepcopy(plain)
    assert pack_linear_layers(packed, min_elements=0) == 2 * 4 + 1
    c_fc = packed.transformer.h[0].mlp.c_fc
    assert isinstance(c_fc, PackedLinear) and c_fc.weight.shape == (48, 4 * 48)  # Conv1D's (in, out)
    logits_close(packed(IDS).logits, plain(IDS).logits)

    weight = c_fc.weight
    for dtype in (torch.float64, torch.float16):
        moved, expected = copy.deepcopy(packed).to(dtype), copy.deepcopy(plain).to(dtype)
        assert all(m.packed_weight is None for m in moved.modules() if isinstance(m, PackedLinear))
        assert moved.lm_head.weight is moved.transformer.wte.weight  # tied still
        logits = moved(IDS).logits
        assert logits.dtype == dtype
        # The same products by the same (moved) weights, F.linear by weight.t() for Conv1D's addmm:
        # equal up to that dtype's rounding.
        torch.testing.assert_close(logits, expected(IDS).logits)
    packed.double()
    assert packed.transformer.h[0].mlp.c_fc.weight is weight  # moved in place, as any module's parameter


def test_a_packed_layer_in_a_pass_that_records_gradients_multiplies_by_its_weight() -> None:
    # oneDNN's operator has no backward: a training pass through a packed layer would silently get
    # no gradients. With autograd recording, the layer multiplies by its plain weight instead.
    torch.manual_seed(0)
    linear = nn.Linear(96, 200)
    packed = PackedLinear.of(copy.deepcopy(linear))
    hidden = torch.randn(3, 96)
    for layer in (linear, packed):
        layer(hidden).square().sum().backward()
    torch.testing.assert_close(packed.weight.grad, linear.weight.grad)
    torch.testing.assert_close(packed.bias.grad, linear.bias.grad)


@torch.inference_mode()
def test_a_deep_copy_of_a_packed_layer_packs_its_own_weight() -> None:
    # oneDNN's packed tensor has no storage to copy: the copy packs its copied weight again.
    torch.manual_seed(0)
    packed = PackedLinear.of(Conv1D(200, 96))
    copied = copy.deepcopy(packed)
    assert copied.weight is not packed.weight and torch.equal(copied.weight, packed.weight)
    assert copied.packed_weight is not None and copied.packed_weight is not packed.packed_weight
    hidden = torch.randn(3, 96)
    assert torch.equal(copied(hidden), packed(hidden))


def test_a_packing_runtime_packs_large_layers_and_steps_equal_the_plain_model(tiny_model_dir) -> None:
    # Packing is for the CPU: on a GPU machine too, these two load there.
    packed = InProcessRuntime(pack_weights=True).serve(tokstep.load(str(tiny_model_dir), device_map="cpu"))
    plain = tokstep.load(str(tiny_model_dir), device_map="cpu")
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


def test_a_packed_model_moved_to_another_dtype_or_device_multiplies_by_its_weight(tiny_model_dir) -> None:
    # As `lm.model.to("cuda")` or `.half()` after loading on a CPU: oneDNN's packed layout is for
    # fp32 on the CPU only, so a moved layer drops it and multiplies by its (moved) weight.
    packed = tokstep.load(str(tiny_model_dir), device_map="cpu")
    plain = tokstep.load(str(tiny_model_dir), device_map="cpu")
    assert pack_linear_layers(packed.model) == 1  # the output layer (32 x 50,257), as a packing runtime does
    head = packed.model.lm_head
    assert isinstance(head, PackedLinear)
    assert torch.equal(head.weight, plain.model.lm_head.weight)

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
    layer = PackedLinear.of(copy.deepcopy(linear))
    hidden = torch.randn(3, 96, dtype=torch.float64)
    assert torch.equal(layer.double()(hidden), linear.double()(hidden))
    layer.to("meta")  # another device ("meta" keeps shapes only)
    assert (layer.weight.device.type, layer.bias.device.type) == ("meta", "meta")
    assert layer.packed_weight is None
