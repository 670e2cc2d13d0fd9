"""The page's "Why this token?" section: layer by layer, and where it looked (`why_section(ui)`).

One collapsed accordion under the page's other sections. Nothing in it runs until it is opened:
opening it (or its Update button) reads the tab's sequence once more with tokstep.core.why (one extra
pass, in the page's runtime, never on a step's path), and draws the layer-by-layer grid and the
attention shading (tokstep.web.why_view). While it is open, every change of the token chips (a Step,
an Auto-run's token, Undo, a pick, a new prompt or model) presses Update from the browser; while it is
closed, that listener runs in the browser only and sends nothing, so Steps cost what they did. A
sequence already drawn is not read again (the `shown` state remembers which).

The section's events are private (page only); /generate gives the same views per token when asked
(tokstep.web.api, `layers` and `attention`), and so does Export + Why (JSON)
(tokstep.core.why_records). On a runtime without the model in this process (a serving engine, ZeroGPU)
both views say so in one line (tokstep.core.forward.ModelNotHere).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr
from gradio.components import Component

from tokstep.core.why import why_this_token
from tokstep.web.bind import bind
from tokstep.web.page_layout import PageUI
from tokstep.web.why_view import NO_SEQUENCE, WHY_CSS, attention_html, lens_html

TITLE = "Why this token? Layer by layer and where it looked"
WHY_TOP_K = 5  # the grid's tokens per layer: compact on a phone
INTRO = (
    "Both views are about the next token: the candidates above, computed at the sequence's last position. "
    "They update after each step while this section is open."
)
# Presses Update when the chips change and the section is open (its button is shown); nothing otherwise.
UPDATE_WHEN_OPEN_JS = """
() => {
  const update = document.querySelector("#why-update");
  const shown = update && (update.checkVisibility ? update.checkVisibility() : update.offsetParent !== null);
  if (shown && !update.disabled) { update.click(); }
}
"""

Update = dict[Component, Any]


@dataclass(frozen=True)
class WhyUI:
    """The section's components."""

    accordion: gr.Accordion
    update: gr.Button
    lens: gr.HTML
    attention: gr.HTML
    shown: gr.State  # (model name, ids) of the sequence drawn now, or None


def why_section(ui: PageUI) -> WhyUI:
    """Build the section inside the current gr.Blocks and wire its events to the page's `ui`."""
    with gr.Accordion(TITLE, open=False, elem_id="why") as accordion:
        gr.Markdown(INTRO, elem_id="why-intro")
        update = gr.Button("Update", elem_id="why-update", size="sm", min_width=0)  # 44 px tall: web/assets.py
        gr.Markdown("#### Layer by layer")
        lens = gr.HTML(NO_SEQUENCE, elem_id="why-lens", css_template=WHY_CSS, js_on_load=None)
        gr.Markdown("#### Where it looked")
        attention = gr.HTML("", elem_id="why-attention", css_template=WHY_CSS, js_on_load=None)
    why = WhyUI(accordion, update, lens, attention, gr.State(None))
    options: dict[str, Any] = {
        "inputs": {ui.session.state, why.shown},
        "outputs": [why.lens, why.attention, why.shown],
        "preprocess": False,
        "show_progress": "minimal",
        "trigger_mode": "always_last",
        "api_visibility": "private",
    }
    handler = bind(on_why, why, ui)
    accordion.expand(handler, **options)
    update.click(handler, **options)
    # In the browser only (no function: nothing is sent unless it presses Update), see the module docstring.
    ui.view.tokens.change(None, js=UPDATE_WHEN_OPEN_JS, api_visibility="private", show_progress="hidden")
    return why


def on_why(why: WhyUI, ui: PageUI, values: dict[Component, Any]) -> Update:
    """Draw both views for the tab's sequence now, unless they show it already."""
    stepper = values[ui.session.state]
    if stepper is None:
        return {why.lens: NO_SEQUENCE, why.attention: "", why.shown: None}
    ids = tuple(stepper.ids)  # a copy: an Auto-run may append to the sequence meanwhile
    key = (stepper.lm.name, ids)
    if values[why.shown] == key:
        return gr.skip()
    result = why_this_token(stepper.lm, ids, top_k=WHY_TOP_K)
    return {why.lens: lens_html(result), why.attention: attention_html(result, stepper.lm.texts), why.shown: key}
