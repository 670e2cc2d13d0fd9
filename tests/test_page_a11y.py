"""Accessibility, phones and themes, checked in a real browser (Chromium + Playwright)."""

from __future__ import annotations

import time

import pytest
from conftest import SCREENSHOTS, token_labels, wait_for_count

MAIN_BUTTONS = ["Step", "Auto-run", "Stop", "Undo", "Reset"]

# Colours of an element's text and of everything behind it, innermost first, as RGBA.
COLOURS_JS = """
(element) => {
  const rgba = (css) => {
    const parts = css.match(/[\\d.]+/g).map(Number);
    return [parts[0], parts[1], parts[2], parts.length > 3 ? parts[3] : 1];
  };
  const layers = [];
  for (let node = element; node; node = node.parentElement) {
    const style = getComputedStyle(node);
    if (style.backgroundImage !== "none") { throw new Error("gradient background: " + style.backgroundImage); }
    layers.push(rgba(style.backgroundColor));
  }
  return {text: rgba(getComputedStyle(element).color), layers};
}
"""


def luminance(rgb) -> float:
    def channel(value: float) -> float:
        value /= 255
        return value / 12.92 if value <= 0.03928 else ((value + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(v) for v in rgb[:3])
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def composite(layers, page_background) -> tuple[float, float, float]:
    """The colour seen through semi-transparent backgrounds, from the page up."""
    colour = page_background
    for r, g, b, alpha in reversed(layers):
        colour = tuple(alpha * c + (1 - alpha) * base for c, base in zip((r, g, b), colour, strict=True))
    return colour


def contrast(page, selector: str, nth: int = 0) -> float:
    colours = page.locator(selector).nth(nth).evaluate(COLOURS_JS)
    dark = page.evaluate("document.body.classList.contains('dark')")
    background = composite(colours["layers"], (11, 15, 25) if dark else (255, 255, 255))
    text = composite([colours["text"]], background)
    lighter, darker = sorted((luminance(text), luminance(background)), reverse=True)
    return (lighter + 0.05) / (darker + 0.05)


def step_times(page, n: int) -> None:
    before = len(token_labels(page))
    for count in range(1, n + 1):
        page.click("#step")
        wait_for_count(page, before + count)


def test_main_controls_have_names_a_screen_reader_announces(page):
    for name in MAIN_BUTTONS:
        assert page.get_by_role("button", name=name, exact=True).count() == 1
    assert page.get_by_role("textbox", name="Prompt").count() == 1
    assert page.get_by_role("slider", name="range slider for Tokens to auto-run").count() == 1
    assert page.get_by_role("slider", name="range slider for Speed (tokens per second)").count() == 1
    assert page.get_by_role("textbox", name="Text so far").count() == 1
    assert page.get_attribute("#step", "aria-keyshortcuts") == "Control+Enter"
    assert page.get_attribute("#status", "aria-live") == "polite"
    tree = page.locator("body").aria_snapshot()
    for name in MAIN_BUTTONS:
        assert f'button "{name}"' in tree


def test_every_main_control_is_reachable_and_usable_by_keyboard(page):
    n_prompt = len(token_labels(page))
    page.locator("#prompt textarea").focus()
    reached = []
    for _ in range(30):  # past the buttons, the top-k's candidates and the mode, to the sliders
        page.keyboard.press("Tab")
        reached.append(page.evaluate("document.activeElement.getAttribute('aria-label') || document.activeElement.id"))
    for element_id in ["step", "autorun", "stop", "undo", "reset"]:
        assert element_id in reached
    assert "range slider for Tokens to auto-run" in reached

    # Focus is visible, and Enter on a focused button presses it.
    page.locator("#step").focus()
    assert page.eval_on_selector("#step", "e => getComputedStyle(e).outlineStyle") != "none"
    page.keyboard.press("Enter")
    wait_for_count(page, n_prompt + 1)
    # The shortcut: Ctrl+Enter steps while typing in the prompt.
    page.locator("#prompt textarea").focus()
    page.keyboard.press("Control+Enter")
    labels = wait_for_count(page, n_prompt + 2)
    assert labels[-1].startswith("+")
    page.locator("#reset").focus()
    page.keyboard.press("Enter")
    wait_for_count(page, n_prompt)


@pytest.mark.parametrize("theme", ["light", "dark"])
def test_text_contrast_meets_wcag_aa_in_both_themes(browser, server_url, theme):
    context = browser.new_context(viewport={"width": 1200, "height": 1000}, color_scheme=theme)
    page = context.new_page()
    try:
        page.goto(f"{server_url}?__theme={theme}")
        page.wait_for_selector("#tokens .token")
        step_times(page, 2)
        assert page.evaluate("document.body.classList.contains('dark')") == (theme == "dark")
        for selector in [
            "#tokens .token .text",  # a prompt token
            "#tokens .token .label",  # its id
            "#tokens .token-container:last-child .token .text",  # a generated token
            "#tokens .token-container:last-child .token .label",
            "#status p",
            "#step",
            "#autorun",
            "#stop",
            "#undo",
            "#reset",
            "#continue",
            "#legend",  # the legend's own words, around its chips
            "#topk .confidence",  # the candidates' percentages
        ]:
            ratio = contrast(page, selector)
            assert ratio >= 4.5, f"{selector} has contrast {ratio:.2f} in the {theme} theme"
        for nth in range(page.locator("#legend .chip").count()):  # every colour of the legend
            ratio = contrast(page, "#legend .chip", nth)
            assert ratio >= 4.5, f"legend chip {nth} has contrast {ratio:.2f} in the {theme} theme"
        page.screenshot(path=str(SCREENSHOTS / f"desktop-{theme}.png"), full_page=True)
    finally:
        context.close()


def test_generated_tokens_are_told_apart_without_colour(page):
    n_prompt = len(token_labels(page))
    step_times(page, 1)
    labels = token_labels(page)
    assert not any(label.startswith("+") for label in labels[:n_prompt])
    assert labels[n_prompt].startswith("+")
    assert "+" in page.inner_text("#legend")


def test_phone_layout_has_no_sideways_scroll_and_touch_sized_buttons(browser, server_url):
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page = context.new_page()
    try:
        page.goto(server_url)
        page.wait_for_selector("#tokens .token")
        page.locator("#prompt textarea").fill("")
        page.locator("#prompt textarea").type("A long prompt so that the tokens need several lines on a phone")
        time.sleep(1.0)
        step_times(page, 3)
        assert page.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")
        for element_id in ["step", "autorun", "stop", "undo", "reset"]:
            box = page.locator(f"#{element_id}").bounding_box()
            assert box["height"] >= 44, f"#{element_id} is {box['height']} px tall"
            assert box["x"] >= 0 and box["x"] + box["width"] <= 390
        chips = [page.locator("#tokens .token").nth(i).bounding_box() for i in range(len(token_labels(page)))]
        assert all(chip["x"] + chip["width"] <= 390 for chip in chips)
        assert len({round(chip["y"]) for chip in chips}) > 1, "tokens should wrap onto several lines"
        page.screenshot(path=str(SCREENSHOTS / "phone-390x844.png"), full_page=True)
    finally:
        context.close()
