"""tokstep: watch a language model write, one token at a time.

import tokstep
lm = tokstep.load("gpt2")
for step in tokstep.generate_steps(lm, "Once upon a time", max_new_tokens=20, top_k=5):
    print(step.token_id, repr(step.token), step.prob, step.top)
"""

from tokstep.engine import (
    STOP_REASON_TEXT,
    PromptError,
    Step,
    StopReason,
    TokenProb,
    TokenStepper,
    generate_steps,
    logits_to_probs,
)
from tokstep.loading import LanguageModel, ModelLoadError, bundled_models, from_objects, load
from tokstep.tokens import PromptToken, TokenTexts, tokenization_table, tokenize

__all__ = [
    "STOP_REASON_TEXT",
    "LanguageModel",
    "ModelLoadError",
    "PromptError",
    "PromptToken",
    "Step",
    "StopReason",
    "TokenProb",
    "TokenStepper",
    "TokenTexts",
    "bundled_models",
    "from_objects",
    "generate_steps",
    "load",
    "logits_to_probs",
    "tokenization_table",
    "tokenize",
]
