"""The "Why this token?" section without a browser: layer by layer (tokstep.core.lens), where it looked
(tokstep.core.attention), the one pass that reads both (tokstep.core.why), and their HTML.

On the tiny GPT-2 and on a handful of tiny architectures (tokstep.testing_models): the lens's last row
is the stepper's own next-token distribution; its earlier rows are the model's final norm and output
layer applied to an uncached pass's hidden states; the attention rows are an eager copy of the model's
own weights from the last position, averaged over heads, and sum to 1; the model's attention
implementation is as it was afterwards, also when the pass fails; the batched runtime runs the pass
under its lock; and where the model is not in this process (a serving engine, ZeroGPU) both views
say so. Expected values come from the models, never from stored numbers.
"""

from __future__ import annotations

import threading

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, GPT2LMHeadModel, PreTrainedModel

import tokstep
from tokstep.core.forward import ModelNotHere
from tokstep.core.stepper import TokenStepper
from tokstep.core.tokens import visible_whitespace
from tokstep.core.why import why_this_token
from tokstep.runtimes.in_process import InProcessRuntime
from tokstep.runtimes.zerogpu import ZeroGPURuntime
from tokstep.testing_models import CONFIGS, END_OF_TEXT, tiny_causal_lm, tiny_model, tokenizer
from tokstep.web.why_view import ATTENTION_CAVEAT, attention_html, lens_html

PROMPT = "Once upon a time there was a little"
PROB_ATOL = 1e-5  # the lens's own pass against the stepper's: the same arithmetic in another order
# A handful of the matrix, each for something of its own: plain (llama), a sliding window (mistral),
# soft-capped logits and a window (gemma2), attention sinks (gpt_oss), one attention layer of two
# (jamba), no attention at all (mamba), no cache returned (recurrent_gemma), the norm on the decoder
# (opt), and a model that cannot switch its attention implementation but returns weights (falcon).
ARCHITECTURES = ("llama", "mistral", "gemma2", "gpt_oss", "jamba", "mamba", "recurrent_gemma", "opt", "falcon")
NO_ATTENTION = {"mamba"}
SINKS = {"gpt_oss"}


def implementations(model: PreTrainedModel) -> list[str | None]:
    """The attention implementation of every config in the model (the top one and each sub-model's)."""
    return [module.config._attn_implementation for module in model.modules() if isinstance(module, PreTrainedModel)]


def stepped(lm: tokstep.LanguageModel, steps: int = 4) -> TokenStepper:
    """A stepper on PROMPT with a few tokens: greedy, a pick, greedy again."""
    stepper = TokenStepper(lm, tokenizer()(PROMPT)["input_ids"])
    stepper.step()
    stepper.step(token_id=stepper.next_top(3)[0][2].token_id)
    for _ in range(steps - 2):
        stepper.step()
    return stepper


def eager_last_query(model: PreTrainedModel, ids: list[int]) -> list[torch.Tensor]:
    """Each attention layer's weights from the last position's query, averaged over heads, from an
    uncached pass over all of `ids` with eager attention: the reference, computed another way."""
    with torch.inference_mode():
        output = model(input_ids=torch.tensor([ids]), use_cache=False, output_attentions=True)
    return [layer[0, :, -1, :].float().mean(dim=0) for layer in output.attentions]  # each (T,)


@pytest.fixture(scope="module")
def served_tiny(tiny_lm: tokstep.LanguageModel) -> tokstep.LanguageModel:
    return InProcessRuntime().serve(tiny_lm)


@pytest.mark.parametrize("kind", ["direct", "batched"])
def test_the_last_layer_is_the_steps_distribution_and_the_earlier_ones_the_models_own_head(
    tiny_lm, served_tiny, tiny_model_dir, kind
):
    lm = tiny_lm if kind == "direct" else served_tiny
    stepper = stepped(lm)
    why = why_this_token(lm, stepper.ids, top_k=5)
    lens = why.lens
    layers = lm.model.config.num_hidden_layers
    assert lens is not None and lens.layers == ("embeddings", *(f"layer {i}" for i in range(1, layers + 1)))
    assert lens.probs.shape == (layers + 1, lm.vocab_size)
    shown = stepper.next_token_probs()
    assert torch.allclose(lens.probs[-1], shown, rtol=0, atol=PROB_ATOL)
    top, _ = stepper.next_top(5)
    assert [c.token_id for c in lens.output] == [c.token_id for c in top]
    assert [c.prob for c in lens.output] == pytest.approx([c.prob for c in top], abs=PROB_ATOL)
    # The earlier rows, by hand: GPT-2's own ln_f and lm_head on an uncached pass's hidden states.
    reference = GPT2LMHeadModel.from_pretrained(tiny_model_dir).eval()
    with torch.inference_mode():
        states = reference(input_ids=torch.tensor([stepper.ids]), output_hidden_states=True).hidden_states
        expected = torch.softmax(reference.lm_head(reference.transformer.ln_f(torch.stack(states[:-1])[:, 0, -1])), -1)
    assert torch.allclose(lens.probs[:-1], expected, rtol=0, atol=PROB_ATOL)
    for row, probs in zip(lens.top, lens.probs, strict=True):  # each row's top-k is its own distribution's
        assert [c.token_id for c in row] == torch.topk(probs, 5).indices.tolist()
        assert all(c.token == lm.texts.text(c.token_id) for c in row)


def test_attention_rows_sum_to_one_and_are_the_models_own_weights(tiny_lm, tiny_model_dir):
    stepper = stepped(tiny_lm)
    where = why_this_token(tiny_lm, stepper.ids).attention
    layers = tiny_lm.model.config.num_hidden_layers
    assert where is not None and where.layers == tuple(f"layer {i}" for i in range(1, layers + 1))
    assert where.weights.shape == (layers, len(stepper.ids)) and where.length == len(stepper.ids)
    assert torch.all(where.weights >= 0)
    assert where.weights.sum(dim=-1) == pytest.approx([1.0] * layers, abs=1e-5)  # per layer, over the positions
    assert float(where.average.sum()) == pytest.approx(1.0, abs=1e-5)
    assert where.elsewhere.tolist() == pytest.approx([0.0] * layers, abs=1e-5)
    eager = GPT2LMHeadModel.from_pretrained(tiny_model_dir, attn_implementation="eager").eval()
    for row, expected in zip(where.weights, eager_last_query(eager, stepper.ids), strict=True):
        assert torch.allclose(row, expected, rtol=0, atol=1e-5)


def test_the_attention_implementation_is_restored_also_when_the_pass_fails(tiny_lm):
    model = tiny_lm.model
    before = implementations(model)
    assert before[0] != "eager"  # the tiny GPT-2 runs sdpa: the view switches it for its pass
    stepper = stepped(tiny_lm, steps=2)
    expected_next = stepper.next_top(5)
    why_this_token(tiny_lm, stepper.ids)
    assert implementations(model) == before
    with pytest.raises(IndexError):  # an id past the vocabulary fails inside the eager pass
        why_this_token(tiny_lm, [*stepper.ids, tiny_lm.vocab_size + 7])
    assert implementations(model) == before
    assert stepper.next_top(5) == expected_next  # the stepper's own state is untouched
    # And the step path is what it was: the same tokens and numbers as a stepper that never looked.
    other = stepped(tiny_lm, steps=2)
    assert [stepper.step().prob for _ in range(3)] == pytest.approx([other.step().prob for _ in range(3)], abs=1e-7)


def test_the_batched_runtime_runs_the_pass_under_its_lock(tiny_lm):
    runtime = InProcessRuntime()
    lm = runtime.serve(tiny_lm)
    ids = tokenizer()(PROMPT)["input_ids"]
    done = threading.Event()
    results = []
    with runtime.forward_lock:  # a pass of another session is running
        thread = threading.Thread(target=lambda: (results.append(why_this_token(lm, ids)), done.set()))
        thread.start()
        assert not done.wait(0.3)  # it waits for that pass
    assert done.wait(30)
    thread.join()
    assert results[0].lens is not None and results[0].attention is not None


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_the_views_on_other_architectures(arch):
    lm = tiny_causal_lm(arch)
    stepper = stepped(lm)
    before = implementations(lm.model)
    why = why_this_token(lm, stepper.ids, top_k=3)
    assert implementations(lm.model) == before
    assert why.lens is not None, why.lens_note
    assert len(why.lens.layers) == lm.model.config.num_hidden_layers + 1
    shown = stepper.next_token_probs()
    assert torch.allclose(why.lens.probs[-1], shown, rtol=0, atol=PROB_ATOL)
    assert [c.token_id for c in why.lens.output] == [c.token_id for c in stepper.next_top(3)[0]]
    if arch in NO_ATTENTION:
        assert why.attention is None
        assert why.attention_note.startswith("Where it looked is not available for this model:")
        return
    where = why.attention
    assert where is not None, why.attention_note
    # The reference: a fresh copy of the same weights on eager attention, reading the whole sequence.
    eager = tiny_model(arch)
    # Set on the config, which every layer reads at each pass: Falcon cannot switch otherwise (and on
    # sdpa it adds its boolean mask to the scores, which leaks later positions into an uncached pass).
    eager.config._attn_implementation = "eager"
    expected = eager_last_query(eager, stepper.ids)
    assert len(expected) == where.weights.shape[0]
    for row, reference in zip(where.weights, expected, strict=True):
        assert torch.allclose(row, reference, rtol=0, atol=1e-5)
    sums = where.weights.sum(dim=-1)
    if arch in SINKS:  # some of each row went to the sink, to no token
        assert torch.all(sums < 1) and torch.allclose(sums + where.elsewhere, torch.ones_like(sums), atol=1e-6)
    else:
        assert sums.tolist() == pytest.approx([1.0] * len(sums), abs=1e-5)


def test_a_model_whose_output_is_not_norm_then_head_gets_no_lens():
    # Falcon-H1 multiplies its output layer's logits (lm_head_multiplier): the lens's check notices.
    settings = {
        "vocab_size": 50257, "bos_token_id": END_OF_TEXT, "eos_token_id": END_OF_TEXT, "pad_token_id": END_OF_TEXT,
        "tie_word_embeddings": False, **CONFIGS["falcon_h1"], "lm_head_multiplier": 2.0,
    }  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model("falcon_h1", **settings), dtype=torch.float32).eval()
    lm = tokstep.from_objects("tiny-falcon_h1-multiplied", model, tokenizer())
    why = why_this_token(lm, tokenizer()(PROMPT)["input_ids"])
    assert why.lens is None
    assert why.lens_note.startswith("Layer by layer is not available for this model:")
    assert why.attention is not None  # where it looked does not depend on the output layer
    assert "not available for this model" in lens_html(why)


def test_off_process_runtimes_say_the_views_need_the_model_here(tiny_lm):
    from engine_support import EngineDouble

    from tokstep.core.loading import load_without_weights
    from tokstep.runtimes.engine import EngineRuntime

    ids = tokenizer()(PROMPT)["input_ids"]
    zero = ZeroGPURuntime().serve(tiny_lm)
    with pytest.raises(ModelNotHere):
        zero.forward.inspect(ids, lambda model, ids: None)
    why = why_this_token(zero, ids)
    assert why.lens is None and why.attention is None
    assert "in this process" in why.lens_note and "ZeroGPU" in why.attention_note
    if "tinystories" not in tokstep.bundled_models():
        pytest.skip("the engine runtime's test needs the bundled model's tokenizer")
    local = load_without_weights("tinystories")
    double = EngineDouble(tokenizer=local.tokenizer, vocab_size=local.vocab_size)
    try:
        lm = EngineRuntime(double.url).load("tinystories")
        stepper = TokenStepper.from_text(lm, "Once upon a time")
        stepper.step()
        asked = double.requests
        why = why_this_token(lm, stepper.ids)
        assert double.requests == asked  # nothing was sent: the engine cannot give hidden states
    finally:
        double.close()
    assert why.lens is None and why.attention is None
    assert "in this process" in why.lens_note and "serving engine" in why.lens_note
    for shown in (lens_html(why), attention_html(why, lm.texts)):
        assert "serving engine" in shown and "<table" not in shown and "why-chip" not in shown


def test_the_html_has_a_row_per_layer_and_a_chip_per_token_escaped(tiny_lm):
    stepper = TokenStepper.from_text(tiny_lm, "a <b> & 'c' \"d\"\n e")
    stepper.step()
    why = why_this_token(tiny_lm, stepper.ids, top_k=4)
    grid = lens_html(why)
    assert grid.count('<tr class="why-row') == tiny_lm.model.config.num_hidden_layers + 1
    assert grid.count("<td class=") == 4 * len(why.lens.layers)
    final = why.lens.output[0].token_id
    assert f'<tr class="why-row why-output" data-layer="layer {len(why.lens.layers) - 1}">' in grid
    assert grid.count(f'class="why-cell why-final" data-token-id="{final}"') >= 1
    chips = attention_html(why, tiny_lm.texts)
    assert ATTENTION_CAVEAT in chips
    rows = 1 + len(why.attention.layers)  # all layers, then each layer
    assert chips.count('<span class="why-chip') == rows * len(stepper.ids)
    for token_id in stepper.ids:  # each token as the page shows it, escaped
        text = visible_whitespace(tiny_lm.texts.text(token_id))
        escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
        assert escaped.replace("'", "&#x27;") + "<small>" in chips
    assert "<b>" not in chips and "<b>" not in grid
    assert lens_html(None) == attention_html(None, tiny_lm.texts)  # no sequence: one line, the same
