"""Turning the engine's state into what the page's components show. No callbacks here.

`render(stepper, settings, note)` returns the values of the page's outputs, in the order
of `VIEW_OUTPUTS`: the per-user state, the token chips, the top-k label, the status text,
the two tables of the notebook, and the text so far.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import gradio as gr

from tokstep.core.sampling import SamplingSettings, sampling_probs
from tokstep.core.stepper import (
    STOP_REASON_TEXT,
    Step,
    TokenProb,
    TokenStepper,
    context_full_message,
    rank_bucket,
)
from tokstep.core.tokens import visible_whitespace
from tokstep.web.assets import PROMPT_COLOR, RANK_COLORS

VIEW_OUTPUTS = ("state", "tokens", "topk", "status", "token_table", "topk_table", "text")
TOKEN_TABLE_HEADERS = ["position", "id", "token", "from"]
TOPK_TABLE_HEADERS = ["id", "token", "p"]

# How a generated token's chip says how it was chosen (besides its colour, which gives its rank).
CHOSEN_MARK = {"greedy": "", "user": " picked", "sampled": " sampled"}

LEGEND = (
    f'<span class="chip" style="background:{PROMPT_COLOR}">Once 7454</span> a prompt token and its id · '
    f'<span class="chip" style="background:{RANK_COLORS["top 1"]}">of +286 · #1</span> '
    "a token the model wrote (+), and its rank among the model's choices: "
    f'<span class="chip" style="background:{RANK_COLORS["top 1"]}">#1</span> '
    f'<span class="chip" style="background:{RANK_COLORS["top 10"]}">#2–10</span> '
    f'<span class="chip" style="background:{RANK_COLORS["top 100"]}">#11–100</span> '
    f'<span class="chip" style="background:{RANK_COLORS["beyond"]}">beyond 100</span> · '
    "<em>picked</em>: chosen by you from the top-k · <em>sampled</em>: drawn at random"
)


@dataclass(frozen=True)
class ViewSettings:
    """What the user set on the page besides the prompt."""

    top_k: int = 5  # how many candidates the label and table show
    sampling: SamplingSettings | None = None  # None: greedy stepping
    score_prompt: bool = False  # colour prompt tokens by how likely the model found them


def inline_code(text: str) -> str:
    """`text` as a Markdown code span, whatever backticks it holds (CommonMark's rule)."""
    if "`" not in text:
        return f"`{text}`"
    fence = "`" * (max(len(run) for run in re.findall(r"`+", text)) + 1)
    return f"{fence} {text} {fence}"


def label_key(token_id: int, token: str) -> str:
    """A gr.Label key: the token with visible whitespace and its id (ids keep keys unique)."""
    return f"{visible_whitespace(token)} ({token_id})"


def token_id_of_label_key(key: str) -> int | None:
    """The id in a key made by `label_key`, or None."""
    match = re.search(r"\((\d+)\)$", key or "")
    return int(match.group(1)) if match else None


def chips_update(chips: Iterable[tuple[str, str, str]]) -> dict[str, Any]:
    """The token chips' gr.HighlightedText update from each chip's (text, label, colour).

    An update (value and colour map), not a new component: each chip's label is a category of
    the colour map, so the map grows with every token, and Gradio builds the updated component
    itself (building one here too cost 0.5 ms an update). The page and the chat tab both use it."""
    entries: list[tuple[str, str]] = []
    color_map: dict[str, str] = {}
    for text, category, color in chips:
        entries.append((text, category))
        color_map[category] = color
    return gr.update(value=entries, color_map=color_map)


def generated_chip(token_id: int, step: Step) -> tuple[str, str]:
    """A generated token's chip label and colour: "+286 · #1" (its id and rank, and how it was
    chosen when not greedily), coloured by the rank's band."""
    return f"+{token_id} · #{step.rank}{CHOSEN_MARK[step.chosen_by]}", RANK_COLORS[rank_bucket(step.rank)]


def token_chips(stepper: TokenStepper | None, score_prompt: bool) -> dict[str, Any]:
    """Every token with its id. Generated tokens carry `+`, their rank, how they were chosen,
    and a colour for the rank; prompt tokens too when `score_prompt` is on."""
    if stepper is None:
        return chips_update([])
    texts = stepper.lm.texts
    chips: list[tuple[str, str, str]] = []
    scores = stepper.prompt_scores() if score_prompt else None
    for position, token_id in enumerate(stepper.ids):
        if position < stepper.prompt_length:
            rank = scores[position].rank if scores else None
            category = f"{token_id}" if rank is None else f"{token_id} · #{rank}"
            color = PROMPT_COLOR if rank is None else RANK_COLORS[rank_bucket(rank)]
        else:
            category, color = generated_chip(token_id, stepper.steps[position - stepper.prompt_length])
        chips.append((visible_whitespace(texts.text(token_id)), category, color))
    return chips_update(chips)


def step_note(step: Step) -> str:
    """The numbers a learner asks about, for the token just appended."""
    how = {"greedy": "the most likely", "user": "picked by you", "sampled": "sampled"}[step.chosen_by]
    note = (
        f"Appended {inline_code(visible_whitespace(step.token))} (id {step.token_id}, {how}): "
        f"p = {step.prob:.4f}, rank {step.rank:,} · entropy {step.entropy:.2f} bits · "
        f"outside the top {len(step.top)}: {step.rest_prob:.1%}"
    )
    if step.elapsed_ms > 0:
        note += f" · {step.elapsed_ms:.1f} ms for this step ({1000 / step.elapsed_ms:,.0f} tokens/s)"
    if step.sampling_prob is not None:
        note += f" · p after the sampling settings: {step.sampling_prob:.4f}"
    note += "."
    if step.stop_reason is not None:
        note += f" **Stopped:** {STOP_REASON_TEXT[step.stop_reason]}."
    return note


def _next_candidates(
    stepper: TokenStepper, settings: ViewSettings
) -> tuple[list[TokenProb], float, list[float] | None]:
    """The top-k next tokens, the mass outside them, and (sampling) each one's sampler probability."""
    top, rest = stepper.next_top(settings.top_k)
    if settings.sampling is None:
        return top, rest, None
    drawn = sampling_probs(stepper.next_token_logits(), settings.sampling)  # (vocab,)
    return top, rest, [float(drawn[c.token_id]) for c in top]


def render(stepper: TokenStepper | None, settings: ViewSettings, note: str = "") -> tuple[Any, ...]:
    """Component values for one state, in the order of VIEW_OUTPUTS."""
    if stepper is None:
        return (None, token_chips(None, False), {}, note, [], [], "")
    lm = stepper.lm
    token_rows = [
        [
            position,
            token_id,
            visible_whitespace(lm.texts.text(token_id)),
            "prompt" if position < stepper.prompt_length else stepper.steps[position - stepper.prompt_length].chosen_by,
        ]
        for position, token_id in enumerate(stepper.ids)
    ]
    lines = [
        f"**{stepper.prompt_length}** prompt tokens · **{len(stepper.generated_ids)}** generated"
        + (f" · context {len(stepper.ids)}/{lm.context_length}" if lm.context_length else "")
        + (" · sampling" if settings.sampling else " · greedy")
    ]
    top: list[TokenProb] = []
    sampler: list[float] | None = None
    if stepper.room_left is not None and stepper.room_left <= 0:
        lines.append(context_full_message(lm))
    else:
        top, rest, sampler = _next_candidates(stepper, settings)
        best = top[0]
        lines.append(
            f"Most likely next token: {inline_code(visible_whitespace(best.token))} (id {best.token_id}) "
            f"with {best.prob:.1%}. The other {lm.vocab_size - len(top):,} tokens share {rest:.1%}."
        )
    if note:
        lines.append(note)
    headers = TOPK_TABLE_HEADERS + (["p after sampling settings"] if sampler is not None else [])
    rows = [
        [c.token_id, visible_whitespace(c.token), round(c.prob, 6)] + ([round(sampler[i], 6)] if sampler else [])
        for i, c in enumerate(top)
    ]
    return (
        stepper,
        token_chips(stepper, settings.score_prompt),
        {label_key(c.token_id, c.token): c.prob for c in top},
        "\n\n".join(lines),
        table(token_rows, TOKEN_TABLE_HEADERS),
        table(rows, headers),
        stepper.text(),
    )


def table(rows: list[list[Any]], headers: list[str]) -> dict[str, list]:
    """A gr.Dataframe's value that carries its own headers: {"headers": ..., "data": rows}.

    Gradio then takes the headers from the value, so a new column (the sampling one) needs no
    new component, which it would rebuild with its whole config at every update. A dict is
    also the form it reads fastest (a pandas DataFrame takes it 4x longer). The headers are
    copied: the value is Gradio's from here on, and the module's lists must stay as they are."""
    return {"headers": list(headers), "data": rows}
