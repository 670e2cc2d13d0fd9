"""tokstep: watch a language model write, one token at a time.

import tokstep
lm = tokstep.load("gpt2")
for step in tokstep.generate_steps(lm, "Once upon a time", max_new_tokens=20, top_k=5):
    print(step.token_id, repr(step.token), step.prob, step.top)

Sampling instead of greedy, reproducible by its seed:
    tokstep.generate_steps(lm, "Once upon a time", sampling=tokstep.SamplingSettings(temperature=0.8, seed=7))
"""

from tokstep.core.distribution import entropy_bits, logits_to_probs, token_rank
from tokstep.core.forward import DirectForward, Forward, ForwardResult
from tokstep.core.loading import bundled_models, from_objects, load
from tokstep.core.model import LanguageModel, ModelLoadError
from tokstep.core.run_loop import generate_steps
from tokstep.core.sampling import (
    SamplingSettings,
    apply_temperature,
    filter_top_k,
    filter_top_p,
    sample_token,
    sampling_probs,
)
from tokstep.core.stepper import (
    STOP_REASON_TEXT,
    ChosenBy,
    PromptError,
    RankBucket,
    Step,
    StopReason,
    TokenProb,
    TokenScore,
    TokenStepper,
    UndoError,
    rank_bucket,
    score_prompt,
)
from tokstep.core.tokens import PromptToken, TokenTexts, tokenization_table, tokenize

__all__ = [
    "STOP_REASON_TEXT",
    "ChosenBy",
    "DirectForward",
    "Forward",
    "ForwardResult",
    "LanguageModel",
    "ModelLoadError",
    "PromptError",
    "PromptToken",
    "RankBucket",
    "SamplingSettings",
    "Step",
    "StopReason",
    "TokenProb",
    "TokenScore",
    "TokenStepper",
    "TokenTexts",
    "UndoError",
    "apply_temperature",
    "bundled_models",
    "entropy_bits",
    "filter_top_k",
    "filter_top_p",
    "from_objects",
    "generate_steps",
    "load",
    "logits_to_probs",
    "rank_bucket",
    "sample_token",
    "sampling_probs",
    "score_prompt",
    "token_rank",
    "tokenization_table",
    "tokenize",
]
