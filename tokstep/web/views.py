"""Turning the engine's state into what the page's components show. No callbacks here.

`render(stepper, settings, note)` returns a `PageView`: the values of the page's view outputs, by
name and in the order of `VIEW_OUTPUTS` (the per-user state, the token chips, the top-k label, the
status text, the two tables of the notebook, the text so far, and the help beside the sampling
settings, tokstep.web.sampling_help). `PageUI.show` in
tokstep.web.page_layout turns it into an update keyed by component.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, NamedTuple

import gradio as gr

from tokstep.core.stepper import (
    STOP_REASON_TEXT,
    RunStopped,
    Step,
    TokenProb,
    TokenStepper,
    context_full_message,
    rank_bucket,
)
from tokstep.core.tokens import visible_whitespace
from tokstep.runtimes.engine import EngineError
from tokstep.web.assets import PROMPT_COLOR, RANK_COLORS
from tokstep.web.sampling_help import help_texts, static_help
from tokstep.web.settings import PageSettings


class PageView(NamedTuple):
    """What the page shows for one state: a value for each of its view outputs."""

    state: TokenStepper | None  # the per-user gr.State
    tokens: dict[str, Any]  # the token chips' update
    topk: dict[str, float]  # the top-k label: {label key: probability}
    status: str
    token_table: dict[str, list]
    topk_table: dict[str, list]
    text: str
    # The help beside the sampling settings, with this step's numbers (tokstep.web.sampling_help).
    temperature_help: str
    top_k_help: str
    top_p_help: str
    seed_help: str


VIEW_OUTPUTS = PageView._fields  # the view outputs' names, in their order
TOKEN_TABLE_HEADERS = ["position", "id", "token", "from"]
TOPK_TABLE_HEADERS = ["id", "token", "p"]
# After an estimated number ("≈"): what it was estimated from.
ESTIMATE_NOTE = "estimated from the serving engine's top tokens"

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


def legend_html(lm: Any) -> str:
    """The legend with `lm`'s own ids: its first token of "Once" and of " of" (LEGEND's are GPT-2's),
    so a student can find the example chips' numbers on the page."""
    once, of = (lm.tokenizer.encode(text, add_special_tokens=False)[:1] or [0] for text in ("Once", " of"))
    return LEGEND.replace("Once 7454", f"Once {once[0]}").replace("of +286", f"of +{of[0]}")


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
    if step.chosen_by == "sampled" and step.sampler == "engine":
        how = "sampled by the serving engine's sampler"
    # An estimate says so: "≈", and what it was estimated from (a serving engine's top tokens).
    entropy = f"entropy {'≈ ' if 'entropy' in step.estimates else ''}{step.entropy:.2f} bits"
    if "entropy" in step.estimates:
        entropy += f" ({ESTIMATE_NOTE})"
    note = (
        f"Appended {inline_code(visible_whitespace(step.token))} (id {step.token_id}, {how}): "
        f"p = {step.prob:.4f}, rank {step.rank:,} · {entropy} · "
        f"outside the top {len(step.top)}: {step.rest_prob:.1%}"
    )
    if step.elapsed_ms > 0:
        note += f" · {step.elapsed_ms:.1f} ms for this step ({1000 / step.elapsed_ms:,.0f} tokens/s)"
    if step.sampling_prob is not None:
        approx = "≈ " if "sampling" in step.estimates else ""
        note += f" · p after the sampling settings: {approx}{step.sampling_prob:.4f}"
        if approx:
            note += f" ({ESTIMATE_NOTE})"
    note += "."
    if step.stop_reason is not None:
        note += f" **Stopped:** {STOP_REASON_TEXT[step.stop_reason]}."
    return note


def _next_candidates(
    stepper: TokenStepper, settings: PageSettings
) -> tuple[list[TokenProb], float, list[float] | None, bool]:
    """The top-k next tokens, the mass outside them, (sampling) each one's sampler probability, and
    whether those are estimates."""
    top, rest = stepper.next_top(settings.top_k)
    if settings.sampling is None:
        return top, rest, None, False
    drawn = stepper.next_sampler(settings.sampling)  # tokstep's over the full distribution, or an engine's
    return top, rest, [drawn.prob(c.token_id) for c in top], drawn.estimated


def render(stepper: TokenStepper | None, settings: PageSettings, note: str = "") -> PageView:
    """What the page shows for `stepper` (None: no sequence, e.g. a prompt it could not take)."""
    if stepper is None:
        return PageView(
            None, token_chips(None, False), {}, note, [], [], "", *static_help(settings.sampling is not None)
        )
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
    estimated = False
    if stepper.room_left is not None and stepper.room_left <= 0:
        lines.append(context_full_message(lm))
    else:
        try:
            top, rest, sampler, estimated = _next_candidates(stepper, settings)
        except EngineError as error:
            # The serving engine failed on the next token's distribution: the tokens so far are
            # all here, and the next Step asks again.
            top, rest, sampler = [], 1.0, None
            lines.append(f"⚠️ **{error.title}:** {error}")
        except RunStopped:  # a Stop cancelled the engine's request for it; the next view asks again
            top, rest, sampler = [], 1.0, None
    if top:
        best = top[0]
        lines.append(
            f"Most likely next token: {inline_code(visible_whitespace(best.token))} (id {best.token_id}) "
            f"with {best.prob:.1%}. The other {lm.vocab_size - len(top):,} tokens share {rest:.1%}."
        )
    if note:
        lines.append(note)
    sampler_header = "p after sampling settings" + (f" (≈, {ESTIMATE_NOTE})" if estimated else "")
    headers = TOPK_TABLE_HEADERS + ([sampler_header] if sampler is not None else [])
    rows = [
        [c.token_id, visible_whitespace(c.token), round(c.prob, 6)] + ([round(sampler[i], 6)] if sampler else [])
        for i, c in enumerate(top)
    ]
    return PageView(
        stepper,
        token_chips(stepper, settings.score_prompt),
        {label_key(c.token_id, c.token): c.prob for c in top},
        "\n\n".join(lines),
        table(token_rows, TOKEN_TABLE_HEADERS),
        table(rows, headers),
        stepper.text(),
        # With the distribution read above (none: the help's sentences alone).
        *help_texts(stepper if top else None, settings.sampling_controls, settings.sampling is not None),
    )


def table(rows: list[list[Any]], headers: list[str]) -> dict[str, list]:
    """A gr.Dataframe's value that carries its own headers: {"headers": ..., "data": rows}.

    Gradio then takes the headers from the value, so a new column (the sampling one) needs no
    new component, which it would rebuild with its whole config at every update. A dict is
    also the form it reads fastest (a pandas DataFrame takes it 4x longer). The headers are
    copied: the value is Gradio's from here on, and the module's lists must stay as they are."""
    return {"headers": list(headers), "data": rows}
