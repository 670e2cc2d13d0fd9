"""The "Two models side by side" section's table and status line, from the two halves of a comparison
(tokstep.core.compare). No callbacks here: tokstep.web.compare_section wires the section.

The table is plain HTML: one row per aligned position (or, with different tokenizers, per stretch of
text both models end a token at), with each model's tokens, their probabilities and top 3, and a
last column that says whether the models agree there, and if not, each model's probability of the
other's choice. Nothing is told by colour alone: a disagreement reads "≠ differ". Cells wrap, so a
phone's 390 px holds the four columns; the colours are the theme's own (light and dark).
"""

from __future__ import annotations

import html

from tokstep.core.compare import Cross, Row, Side, align, disagreements
from tokstep.core.stepper import Step
from tokstep.core.tokens import visible_whitespace
from tokstep.web.sampling_help import percent

# Scoped to the table's gr.HTML (css_template): the theme's variables, so dark mode follows.
TABLE_CSS = """
table.compare { width: 100%; border-collapse: collapse; table-layout: fixed; }
table.compare caption { text-align: left; padding-bottom: 6px; }
table.compare th, table.compare td {
  border-bottom: 1px solid var(--border-color-primary); padding: 6px; vertical-align: top;
  text-align: left; overflow-wrap: anywhere;
}
table.compare col.position { width: 2.4em; }
table.compare col.mark { width: 30%; }
table.compare tr.differ > th { border-left: 4px solid var(--color-accent); }
table.compare .top { margin-top: 2px; }
table.compare code { white-space: pre-wrap; }
table.compare .top, table.compare .cross { font-size: var(--text-sm); }
@media (max-width: 520px) {
  table.compare { font-size: var(--text-sm); }
  table.compare .top, table.compare .cross { font-size: var(--text-xs); }
  table.compare col.position { width: 1.8em; }
  table.compare col.mark { width: 24%; }
  table.compare th, table.compare td { padding: 4px 3px; }
}
"""

EMPTY = "<p>Press <strong>Step both</strong> to start both models on the page's prompt.</p>"


def code(token: str) -> str:
    """A token's display text as inline code (whitespace made visible)."""
    return f"<code>{html.escape(visible_whitespace(token))}</code>"


def _choice(step: Step) -> str:
    top = " · ".join(f"{code(candidate.token)} {percent(candidate.prob)}" for candidate in step.top)
    return (
        f'<div class="pick">{code(step.token)} {percent(step.prob)}</div>'
        f'<div class="top">top {len(step.top)}: {top}</div>'
    )


def _cell(steps: list[Step], done: bool) -> str:
    if not steps:
        return "<em>(stopped)</em>" if done else "…"
    return "".join(_choice(step) for step in steps)


def _cross(holder: str, other: str, cross: Cross | None) -> str:
    """`holder`'s probability of `other`'s choice: "A gives ␣was 3.2%"."""
    if cross is None:
        return ""
    what = code(cross.token)
    if cross.first_of_text:  # the tokenizers differ: not the other's own token, the first of its text
        what += f" (first token of {other}'s text)"
    return f'<div class="cross">{holder} gives {what} {percent(cross.prob)}</div>'


def _mark(row: Row) -> str:
    if not row.ended:
        return "… <em>not finished</em>"
    if row.agree:
        return "✓ same"
    return f"<strong>≠ differ</strong>{_cross('A', 'B', row.a_cross)}{_cross('B', 'A', row.b_cross)}"


def table_html(a: Side | None, b: Side | None) -> str:
    """The comparison's rows as a table (EMPTY before the first step)."""
    if a is None or b is None:
        return EMPTY
    rows = align(a, b)
    if not rows:
        return EMPTY
    how = "position" if a.by_position else "text"
    body = "".join(
        f'<tr class="{"open" if not row.ended else "same" if row.agree else "differ"}">'
        f'<th scope="row">{number}</th><td>{_cell(row.a, a.done())}</td><td>{_cell(row.b, b.done())}</td>'
        f"<td>{_mark(row)}</td></tr>"
        for number, row in enumerate(rows, start=1)
    )
    caption = (
        f"Aligned by {how}. Each cell: the token each model chose, its probability, and its top 3. "
        "Where they differ: each model's probability of the other's choice (A gives B's token …)."
    )
    return (
        f'<table class="compare"><caption>{caption}</caption>'
        '<colgroup><col class="position"><col><col><col class="mark"></colgroup>'
        f'<thead><tr><th scope="col">#</th><th scope="col">A: {html.escape(a.name)}</th>'
        f'<th scope="col">B: {html.escape(b.name)}</th><th scope="col">Same?</th></tr></thead>'
        f"<tbody>{body}</tbody></table>"
    )


def status_text(a: Side | None, b: Side | None, note: str = "") -> str:
    """How the two are aligned, how far they got and where they disagree, and `note`."""
    if a is None or b is None:
        return note
    rows = align(a, b)
    if a.by_position:
        how = (
            f"A (**{a.name}**) and B (**{b.name}**) share a tokenizer: rows are aligned by position, and "
            "where they differ each model gives the other's token its own probability."
        )
    else:
        how = (
            f"A (**{a.name}**) and B (**{b.name}**) have different tokenizers: rows are aligned by text (a row "
            "ends where both have written as many characters, or where their texts part), and a Step writes "
            "what the row needs. Where they differ, each model gives the first token of the other's text, in "
            "its own tokenizer, its probability."
        )
    counts = (
        f"{len(a.steps)} and {len(b.steps)} tokens written · {len(rows)} rows · "
        f"they differ in {disagreements(rows)} of {sum(1 for row in rows if row.ended)} finished rows."
    )
    return "\n\n".join(part for part in (how, counts, note) if part)
