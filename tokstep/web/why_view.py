"""The "Why this token?" section's HTML: the layer-by-layer grid and the attention shading. No callbacks.

`lens_html(why)` draws tokstep.core.lens's `LogitLens` as a compact grid: one row per layer (the
embeddings first, the model's output last), its most likely tokens across, each probability as a
bar's length; the model's final choice is outlined wherever it appears, so a student sees from which
layer on it leads. `attention_html(why, texts)` draws tokstep.core.attention's `AttentionMap` as a row
of token chips shaded by the share of attention each got from the last position (all layers averaged),
and, folded, one row per layer. Tokens show their whitespace as the page's chips do
(tokstep.core.tokens.visible_whitespace) and are escaped; numbers are written out beside the shading,
so nothing depends on colour alone. The CSS (`WHY_CSS`) is each component's own (gr.HTML's
css_template), in the page's light and dark themes and at phone width.
"""

from __future__ import annotations

import html

import torch

from tokstep.core.stepper import TokenProb
from tokstep.core.tokens import TokenTexts, visible_whitespace
from tokstep.core.why import WhyThisToken

LENS_LEAD = (
    "What each layer would predict next if the model stopped there: its final norm and output layer applied "
    "to that layer's output at the last position (the “logit lens”). The last row is the model's own output, "
    "the candidates shown above; its first choice is outlined wherever it appears."
)
ATTENTION_CAVEAT = (
    "Shading shows where the heads looked on average; it is not an explanation of why the model chose the token."
)
NO_SEQUENCE = "<p class='why-note'>No tokens yet: type a prompt.</p>"
# Shading from no attention (lightest) to the row's most attended token (darkest), dark text on all of
# them: #111 on the darkest shade is above 8:1, in either theme (the chips carry their own background).
SHADE_HUE, SHADE_SATURATION, LIGHTEST, DARKEST = 38, 92, 97, 52
SINK_SHOWN = 0.005  # a layer's attention to no token (a sink) is written out from half a percent on

WHY_CSS = """
.why-lead, .why-note, .why-caveat { margin: 0.3em 0; }
.why-caveat { font-style: italic; }
.why-scroll { overflow-x: auto; max-width: 100%; }
table.why-lens { border-collapse: collapse; width: 100%; font-size: 0.9em; table-layout: fixed; min-width: 340px; }
.why-lens th, .why-lens td { border: 1px solid var(--border-color-primary); padding: 2px 4px; text-align: left; }
.why-lens thead th { font-weight: 600; }
.why-lens th[scope="row"] { white-space: nowrap; font-weight: 500; }
.why-lens tr > :first-child { width: 6.5em; }  /* the layers' column (table-layout: fixed reads the head row) */
.why-lens td { position: relative; overflow: hidden; vertical-align: top; }
.why-lens .why-token { display: block; font-family: var(--font-mono); white-space: pre; overflow: hidden;
  text-overflow: ellipsis; }
.why-lens .why-p { display: block; font-size: 0.85em; }
.why-lens .why-bar { display: block; height: 4px; background: var(--color-accent); border-radius: 2px; min-width: 1px; }
.why-lens td.why-final { outline: 2px solid var(--color-accent); outline-offset: -2px; font-weight: 700; }
.why-lens tr.why-output th, .why-lens tr.why-output td { border-top: 2px solid var(--body-text-color); }
.why-chips { display: flex; flex-wrap: wrap; gap: 4px; align-items: baseline; margin: 4px 0; }
.why-layer-name { min-width: 6.5em; font-weight: 500; }
.why-chip { color: #111; border-radius: 4px; padding: 0 4px; font-family: var(--font-mono); white-space: pre;
  border: 1px solid rgba(0, 0, 0, 0.15); }
.why-chip small { font-family: var(--font-sans); margin-left: 3px; }
.why-chip.why-query { outline: 2px dashed var(--body-text-color); outline-offset: 1px; }
.why-sink { font-size: 0.85em; }
details.why-layers summary { cursor: pointer; min-height: 44px; display: flex; align-items: center; }
@media (max-width: 640px) {
  table.why-lens { font-size: 0.8em; }
  .why-lens tr > :first-child { width: 5.6em; }
  .why-lens th[scope="row"] { white-space: normal; }
  .why-layer-name { min-width: 100%; }
}
"""


def _text(texts: TokenTexts, token_id: int) -> str:
    """A token as the page shows it, escaped for HTML."""
    return html.escape(visible_whitespace(texts.text(token_id)))


def percent(p: float) -> str:
    """A probability as the page writes it (tokstep.web.assets: enough digits for small ones)."""
    if p < 0.001:
        return "<0.1%"
    return f"{100 * p:.1f}%" if p < 0.1 else f"{100 * p:.0f}%"


def _lens_cell(candidate: TokenProb, final_id: int) -> str:
    token = html.escape(visible_whitespace(candidate.token))
    shown = html.escape(percent(candidate.prob))
    final = " why-final" if candidate.token_id == final_id else ""
    return (
        f'<td class="why-cell{final}" data-token-id="{candidate.token_id}" data-prob="{candidate.prob:.6g}" '
        f'title="{token} (id {candidate.token_id}): {shown}">'
        f'<span class="why-token">{token}</span><span class="why-p">{shown}</span>'
        f'<span class="why-bar" style="width:{100 * candidate.prob:.1f}%"></span></td>'
    )


def lens_html(why: WhyThisToken | None) -> str:
    """The layer-by-layer grid for `why` (None: no sequence), or the line that says why there is none."""
    if why is None:
        return NO_SEQUENCE
    lens = why.lens
    if lens is None:
        return f"<p class='why-note'>{html.escape(why.lens_note)}</p>"
    final_id = lens.output[0].token_id
    columns = len(lens.output)
    head = "".join(f'<th scope="col">{_ordinal(i)}</th>' for i in range(1, columns + 1))
    rows = []
    for number, (name, top) in enumerate(zip(lens.layers, lens.top, strict=True)):
        output = number == len(lens.layers) - 1
        label = f"{html.escape(name)} (output)" if output else html.escape(name)
        cells = "".join(_lens_cell(candidate, final_id) for candidate in top)
        rows.append(
            f'<tr class="why-row{" why-output" if output else ""}" data-layer="{html.escape(name)}">'
            f'<th scope="row">{label}</th>{cells}</tr>'
        )
    return (
        f"<p class='why-lead'>{html.escape(LENS_LEAD)}</p>"
        '<div class="why-scroll">'
        '<table class="why-lens" aria-label="Layer by layer: each layer’s most likely next tokens">'
        f"<thead><tr><th scope='col'>after</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
    )


def _ordinal(n: int) -> str:
    """1st, 2nd, 3rd, 4th, ..., 11th, ..., 21st."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _shade(weight: float, strongest: float) -> str:
    """The chip colour for `weight`, the row's `strongest` weight the darkest."""
    share = weight / strongest if strongest > 0 else 0.0
    lightness = LIGHTEST - (LIGHTEST - DARKEST) * share
    return f"hsl({SHADE_HUE}, {SHADE_SATURATION}%, {lightness:.1f}%)"


def _chip_row(name: str, weights: torch.Tensor, ids: tuple[int, ...], texts: TokenTexts, sink: float) -> str:
    """One row of shaded chips: `weights` (T,) over the sequence's `ids`, the last chip the query's."""
    values = weights.tolist()
    strongest = max(values) if values else 0.0
    chips = []
    for position, (token_id, weight) in enumerate(zip(ids, values, strict=True)):
        token = _text(texts, token_id)
        shown = html.escape(percent(weight)) if weight > 0 else "0%"
        query = " why-query" if position == len(ids) - 1 else ""
        chips.append(
            f'<span class="why-chip{query}" style="background:{_shade(weight, strongest)}" data-position="{position}" '
            f'data-weight="{weight:.6g}" title="{token} (position {position}): {shown} of the attention">'
            f"{token}<small>{shown}</small></span>"
        )
    rest = f'<span class="why-sink">{html.escape(percent(sink))} to no token</span>' if sink >= SINK_SHOWN else ""
    return (
        f'<div class="why-chips" data-layer="{html.escape(name)}">'
        f'<span class="why-layer-name">{html.escape(name)}</span>{"".join(chips)}{rest}</div>'
    )


def attention_html(why: WhyThisToken | None, texts: TokenTexts) -> str:
    """Where the last position looked, as shaded chips (None: no sequence), or the line that says why not."""
    if why is None:
        return NO_SEQUENCE
    where = why.attention
    if where is None:
        return f"<p class='why-note'>{html.escape(why.attention_note)}</p>"
    last = why.ids[-1]
    lead = (
        f"Where the last token, <code>{_text(texts, last)}</code> (position {len(why.ids) - 1}, dashed), looked when "
        "the model worked out the next token: each token shaded by the share of attention it got from there, "
        "averaged over each layer's heads; darkest: the most in that row."
    )
    elsewhere = where.elsewhere
    rows = "".join(
        _chip_row(name, where.weights[layer], why.ids, texts, float(elsewhere[layer]))
        for layer, name in enumerate(where.layers)
    )
    return (
        f"<p class='why-lead'>{lead}</p><p class='why-caveat'>{html.escape(ATTENTION_CAVEAT)}</p>"
        f"{_chip_row('all layers', where.average, why.ids, texts, float(elsewhere.mean()))}"
        f"<details class='why-layers'><summary>Each layer ({len(where.layers)})</summary>{rows}</details>"
    )
