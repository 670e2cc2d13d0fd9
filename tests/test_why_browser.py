"""The "Why this token?" section in a real browser (Chromium + Playwright) on the tiny model's page:
opening it draws the layer-by-layer grid (one row per layer and one for the embeddings, the last
row's first token the page's top candidate) and the attention shading (a chip per token); while open
it follows each Step, while closed it does not; on a phone and in the dark theme it stays readable."""

from __future__ import annotations

import re

import pytest
from conftest import SCREENSHOTS, token_labels, wait_for_count
from test_page_a11y import contrast

from tokstep.web.why_section import TITLE

ROWS = "#why-lens tr.why-row"
CHIPS = "#why-attention .why-chips[data-layer='all layers'] .why-chip"


def open_why(page) -> None:
    page.locator("#why").get_by_text(TITLE).first.click()
    page.locator(ROWS).first.wait_for(state="visible", timeout=30_000)


def top_candidate_id(page) -> int:
    """The id of the page's first candidate in the top-k ("␣malt (26868)")."""
    return int(re.search(r"\((\d+)\)\s*$", page.locator("#topk dt").first.inner_text()).group(1))


def wait_for_chips(page, count: int) -> None:
    page.wait_for_function(f'() => document.querySelectorAll("{CHIPS}").length === {count}', timeout=30_000)


def output_first_id(page) -> int:
    return int(page.locator(f"{ROWS}.why-output td").first.get_attribute("data-token-id"))


def check_section(page, layers: int) -> None:
    """The grid has a row per layer plus the embeddings' and ends with the page's top candidate; the
    chips shade every token of the sequence."""
    tokens = len(token_labels(page))
    wait_for_chips(page, tokens)
    names = page.locator(ROWS).evaluate_all("rows => rows.map(row => row.dataset.layer)")
    assert names == ["embeddings", *(f"layer {i}" for i in range(1, layers + 1))]
    assert output_first_id(page) == top_candidate_id(page)
    shades = page.locator(CHIPS).evaluate_all("chips => chips.map(chip => getComputedStyle(chip).backgroundColor)")
    weights = [float(w) for w in page.locator(CHIPS).evaluate_all("chips => chips.map(chip => chip.dataset.weight)")]
    assert len(shades) == tokens and len(set(shades)) > 1  # shaded, not one colour
    assert sum(weights) == pytest.approx(1.0, abs=1e-3)  # all of the last position's attention
    darkest = max(range(tokens), key=weights.__getitem__)
    assert shades[darkest] == min(shades, key=lambda rgb: sum(map(float, re.findall(r"[\d.]+", rgb)[:3])))
    assert "not an explanation" in page.locator("#why-attention").inner_text()


def test_the_why_section_opens_follows_steps_only_while_open_and_fits_a_phone(page, browser, server_url, tiny_lm):
    layers = tiny_lm.model.config.num_hidden_layers
    assert page.locator(ROWS).count() == 0  # nothing is drawn, or run, before the section opens
    open_why(page)
    check_section(page, layers)
    tokens = len(token_labels(page))

    page.click("#step")  # open: the section follows the step
    wait_for_count(page, tokens + 1)
    check_section(page, layers)
    page.screenshot(path=str(SCREENSHOTS / "why-desktop.png"), full_page=True)

    page.locator("#why").get_by_text(TITLE).first.click()  # closed: the next step leaves it alone
    page.locator(ROWS).first.wait_for(state="hidden")
    page.click("#step")
    wait_for_count(page, tokens + 2)
    page.wait_for_timeout(1000)
    assert page.locator(CHIPS).count() == tokens + 1
    open_why(page)  # opened again: it catches up
    check_section(page, layers)

    for theme, viewport in (("light", {"width": 390, "height": 844}), ("dark", {"width": 1200, "height": 1000})):
        context = browser.new_context(viewport=viewport, is_mobile=theme == "light", has_touch=theme == "light")
        tab = context.new_page()
        try:
            tab.goto(server_url + ("?__theme=dark" if theme == "dark" else ""))
            tab.wait_for_selector("#tokens .token")
            open_why(tab)
            check_section(tab, layers)
            assert tab.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")
            for target in ("#why-update", "#why-attention details summary"):  # touch-sized
                assert tab.locator(target).bounding_box()["height"] >= 44, target
            assert tab.evaluate("document.body.classList.contains('dark')") == (theme == "dark")
            for nth in range(tab.locator(CHIPS).count()):  # dark text on every shade, in either theme
                assert contrast(tab, CHIPS, nth) >= 4.5
            for selector in ("#why-lens .why-token", "#why-lens th", "#why-attention .why-caveat"):
                assert contrast(tab, selector) >= 4.5, selector
            tab.locator("#why").scroll_into_view_if_needed()
            name = "why-phone-390.png" if theme == "light" else "why-dark.png"
            tab.screenshot(path=str(SCREENSHOTS / name), full_page=True)
        finally:
            context.close()
