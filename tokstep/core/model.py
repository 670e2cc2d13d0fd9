"""`LanguageModel`: a loaded model, its tokenizer, and the Forward its passes go through."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tokstep.core.forward import DirectForward, Forward, model_device
from tokstep.core.tokens import TokenTexts


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message names it and says what to do."""


@dataclass
class LanguageModel:
    """A loaded model with its tokenizer, shared read-only by every user of it.

    `forward` is where its passes run: by default a direct call in the caller's thread
    (`DirectForward`). A server gives the same model a runtime of its own with
    `runtime.serve(lm)`, a new LanguageModel over the same model and tokenizer; `lm` itself
    is left as it was.
    """

    name: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    texts: TokenTexts
    # Tokens the model can read at once, prompt and generated together; None if unbounded.
    context_length: int | None
    # Ids that end generation, as `model.generate` sees them (the generation config's).
    eos_token_ids: frozenset[int]
    forward: Forward = field(default=None, repr=False)  # type: ignore[assignment]  (set in __post_init__)

    def __post_init__(self) -> None:
        if self.forward is None:
            self.forward = DirectForward(self.model)

    @property
    def device(self) -> torch.device:
        """Where input ids go: the device of the input embeddings."""
        return model_device(self.model)

    @cached_property
    def vocab_size(self) -> int:
        """Width of the model's output: the softmax runs over all of it (read once: every step checks against it)."""
        return self.model.get_output_embeddings().out_features
