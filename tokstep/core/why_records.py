"""The "Why this token?" views as plain JSON: the optional `layers` and `attention` fields that
/generate's updates carry when asked (tokstep.web.api) and that run files carry per step when exported
with them (tokstep.core.run_files). One format for both, documented in docs/run-format.md:

    "layers": [                     # the logit lens, the embeddings first, the model's output last
      {"layer": "embeddings", "top": [[token_id, token, prob], ...]},
      ...
      {"layer": "layer 12", "top": [[464, " the", 0.31], ...]}    # = the step's own `top`
    ],
    "attention": {                  # where the last position looked, averaged over heads
      "tokens": [[token_id, token], ...],   # the sequence the token was chosen after, position 0 first
      "average": [w_0, ..., w_T-1],         # all layers together
      "layers": [{"layer": "layer 1", "weights": [w_0, ..., w_T-1], "elsewhere": 0.0}, ...]
    }

Both are about the distribution the token was chosen from: the sequence before it, read at its last
position. Each layer's weights sum to 1 with `elsewhere` (what went to no token: attention sinks, as
in gpt-oss; 0 for most models). A view that could not be read for a step is null, and a `layers_note`
or `attention_note` beside it says why in one sentence.
"""

from __future__ import annotations

from typing import Any

from tokstep.core.attention import AttentionMap
from tokstep.core.forward import ModelNotHere
from tokstep.core.lens import LogitLens
from tokstep.core.stepper import TokenStepper
from tokstep.core.tokens import TokenTexts
from tokstep.core.why import DEFAULT_TOP_K, WhyReader, WhyThisToken


def lens_record(lens: LogitLens) -> list[dict[str, Any]]:
    """Each row of the lens with its most likely tokens, highest first."""
    return [
        {"layer": name, "top": [[c.token_id, c.token, c.prob] for c in row]}
        for name, row in zip(lens.layers, lens.top, strict=True)
    ]


def attention_record(where: AttentionMap, ids: tuple[int, ...], texts: TokenTexts) -> dict[str, Any]:
    """The attention map with the tokens its columns stand for."""
    elsewhere = where.elsewhere.tolist()
    return {
        "tokens": [[token_id, texts.text(token_id)] for token_id in ids],
        "average": where.average.tolist(),
        "layers": [
            {"layer": name, "weights": row, "elsewhere": rest}
            for name, row, rest in zip(where.layers, where.weights.tolist(), elsewhere, strict=True)
        ],
    }


def why_fields(why: WhyThisToken, texts: TokenTexts, layers: bool, attention: bool) -> dict[str, Any]:
    """The fields asked for (`layers`, `attention`), each with a note beside it where it is null."""
    fields: dict[str, Any] = {}
    if layers:
        fields["layers"] = lens_record(why.lens) if why.lens is not None else None
        if why.lens is None:
            fields["layers_note"] = why.lens_note
    if attention:
        fields["attention"] = attention_record(why.attention, why.ids, texts) if why.attention is not None else None
        if why.attention is None:
            fields["attention_note"] = why.attention_note
    return fields


def why_of_steps(
    stepper: TokenStepper, layers: bool, attention: bool, top_k: int = DEFAULT_TOP_K
) -> list[dict[str, Any]]:
    """For each of the stepper's generated tokens, the fields asked for (`why_fields`), read along its
    path with one WhyReader: a token's pass each. ModelNotHere (its sentence) when the model does not run
    in this process (a serving engine, ZeroGPU), where neither view can be read."""
    reader = WhyReader(stepper.lm, top_k, lens=layers, attention=attention)
    fields = []
    for step in stepper.steps:
        why = reader.read(stepper.ids[: step.position])
        if not why.here:
            raise ModelNotHere(why.lens_note)
        fields.append(why_fields(why, stepper.lm.texts, layers, attention))
    return fields
