"""The plain-language help beside the sampling settings, in a real browser (Chromium + Playwright):
its live example is the model's own numbers for the current step, at desktop width, at a phone's
and in the dark theme. Screenshots go to test-artifacts/screenshots/."""

from __future__ import annotations

import pytest
import torch
from conftest import SCREENSHOTS

from tokstep.core.tokens import tokenize, visible_whitespace
from tokstep.web.constants import DEFAULT_PROMPT
from tokstep.web.sampling_help import percent

WAIT_MS = 30_000
VIEWPORTS = {
    "desktop": ({"width": 1200, "height": 1000}, ""),
    "phone-390": ({"width": 390, "height": 844}, ""),
    "dark": ({"width": 1200, "height": 1000}, "?__theme=dark"),
}


def expected_temperature_example(lm) -> tuple[str, str, str]:
    """The page's first step's top token, its probability, and what temperature 0.5 would give it."""
    ids = torch.tensor([tokenize(lm.tokenizer, DEFAULT_PROMPT)])
    with torch.inference_mode():
        logits = lm.model(input_ids=ids).logits[0, -1].float()
    top = int(logits.argmax())
    return (
        visible_whitespace(lm.texts.text(top)),
        percent(float(torch.softmax(logits, -1)[top])),
        percent(float(torch.softmax(logits / 0.5, -1)[top])),
    )


@pytest.mark.parametrize("view", list(VIEWPORTS))
def test_the_temperature_help_shows_the_models_own_numbers(browser, server_url, tiny_lm, view):
    viewport, query = VIEWPORTS[view]
    phone = viewport["width"] < 500
    context = browser.new_context(viewport=viewport, is_mobile=phone, has_touch=phone)
    try:
        tab = context.new_page()
        tab.goto(server_url + query)
        tab.wait_for_selector("#tokens .token", timeout=WAIT_MS)
        tab.locator("#choosing").get_by_text("Choosing: sampling settings, top-k size").first.click()
        help_box = tab.locator("#temperature-help")
        help_box.wait_for(state="visible", timeout=WAIT_MS)
        token, at_one, at_half = expected_temperature_example(tiny_lm)
        tab.wait_for_function(
            "words => words.every(w => document.querySelector('#temperature-help').innerText.includes(w))",
            arg=[token, at_one, at_half],
            timeout=WAIT_MS,
        )
        for box in ("#top-k-help", "#top-p-help", "#seed-help"):
            assert tab.locator(box).inner_text().strip()
        assert tab.evaluate("document.documentElement.scrollWidth <= window.innerWidth")  # no sideways scroll
        help_box.scroll_into_view_if_needed()
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        tab.screenshot(path=str(SCREENSHOTS / f"sampling-help-{view}.png"))
    finally:
        context.close()
