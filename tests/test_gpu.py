"""On a CUDA GPU, in the half type tokstep.load picks there and in fp32: greedy steps equal
`model.generate(do_sample=False)`, and sessions stepped at the same time (batched) equal each
session stepped alone. Skipped where torch sees no GPU (CI has none)."""

from __future__ import annotations

import threading

import pytest
import torch
from test_batching import PROMPTS  # prompts of different lengths, so that batches need padding

import tokstep
from tokstep.core.model import LanguageModel
from tokstep.runtimes.in_process import InProcessRuntime
from tokstep.runtimes.packed_linear import PackedLinear, packing_available

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

NEW_TOKENS = 24


@pytest.fixture(scope="module", params=["half", "fp32", "moved from the cpu"])
def gpu_lm(request: pytest.FixtureRequest) -> LanguageModel:
    if request.param == "moved from the cpu":
        # Loaded on the CPU, then moved, as a notebook may do: the batcher must feed the model
        # where it is now.
        lm = tokstep.load("tinystories", device_map="cpu")
        lm.model.to("cuda")
        return InProcessRuntime().serve(lm)
    lm = tokstep.load("tinystories", device_map="cuda")
    assert lm.device.type == "cuda" and lm.model.dtype in (torch.bfloat16, torch.float16)
    if request.param == "fp32":
        lm.model.float()
    return InProcessRuntime().serve(lm)  # batched, as the app serves it


def greedy_run(lm: LanguageModel, prompt: str) -> tuple[list[int], list[float]]:
    steps = list(tokstep.generate_steps(lm, prompt, max_new_tokens=NEW_TOKENS, top_k=5))
    return [step.token_id for step in steps], [step.prob for step in steps]


@torch.inference_mode()
def test_greedy_steps_equal_generate_on_the_gpu(gpu_lm: LanguageModel):
    for prompt in PROMPTS:
        ids = tokstep.tokenize(gpu_lm.tokenizer, prompt)
        input_ids = torch.tensor([ids], device=gpu_lm.device)
        generated = gpu_lm.model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            do_sample=False,
            max_new_tokens=NEW_TOKENS,
            pad_token_id=gpu_lm.tokenizer.eos_token_id,
        )
        # Both stop at the end-of-text token, where a story ends before NEW_TOKENS.
        assert greedy_run(gpu_lm, prompt)[0] == generated[0, len(ids) :].tolist()


def test_a_lone_run_does_not_prefetch_on_the_gpu(gpu_lm: LanguageModel):
    # Alone, a pass of GPU kernel launches would keep taking the GIL back from the thread it overlaps.
    # A batcher of its own (same model): the other tests' sequences, which stepped a moment ago,
    # would count as a class stepping beside this run, and a class does prefetch.
    lm = InProcessRuntime().serve(gpu_lm)
    assert lm.forward.batcher is not gpu_lm.forward.batcher and not lm.forward.batcher.prefetches_alone
    run = tokstep.generate_steps(lm, PROMPTS[0], max_new_tokens=4)
    next(run)
    assert (lm.forward.batcher.counters.passes, lm.forward.batcher.waiting) == (1, 0)
    run.close()


def test_concurrent_sessions_equal_each_alone_on_the_gpu(gpu_lm: LanguageModel):
    alone = {prompt: greedy_run(gpu_lm, prompt) for prompt in PROMPTS}
    together: dict[str, tuple[list[int], list[float]]] = {}
    passes_before = gpu_lm.forward.batcher.counters.passes
    threads = [
        threading.Thread(target=lambda p=prompt: together.__setitem__(p, greedy_run(gpu_lm, p))) for prompt in PROMPTS
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    # Fewer passes than tokens: the sessions' steps shared passes.
    assert gpu_lm.forward.batcher.counters.passes - passes_before < len(PROMPTS) * NEW_TOKENS
    # bf16 keeps about 3 significant digits, and a padded batch adds its rows in another order.
    tolerance = 1e-4 if gpu_lm.model.dtype == torch.float32 else 5e-2
    for prompt in PROMPTS:
        assert together[prompt][0] == alone[prompt][0]
        assert together[prompt][1] == pytest.approx(alone[prompt][1], abs=tolerance)


@pytest.mark.skipif(not packing_available(), reason="this torch has no oneDNN")
@torch.inference_mode()
def test_a_model_packed_on_the_cpu_steps_on_the_gpu_once_moved(tiny_model_dir):
    lm = InProcessRuntime(pack_weights=True).serve(tokstep.load(str(tiny_model_dir), device_map="cpu"))
    assert isinstance(lm.model.lm_head, PackedLinear)  # the tiny model's output layer is packed
    lm.model.to("cuda")
    ids = tokstep.tokenize(lm.tokenizer, PROMPTS[0])
    input_ids = torch.tensor([ids], device="cuda")
    generated = lm.model.generate(
        input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False, max_new_tokens=8, pad_token_id=0
    )
    steps = list(tokstep.generate_steps(lm, PROMPTS[0], max_new_tokens=8))
    assert [step.token_id for step in steps] == generated[0, len(ids) :].tolist()
