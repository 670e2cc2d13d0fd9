"""The "Two models side by side" section in a real browser (Chromium + Playwright): pressed from the
keyboard, it shows one row per step of both models, fits a phone's width, and is legible in the dark
theme. Screenshots go to test-artifacts/screenshots/."""

from __future__ import annotations

import pytest
from conftest import SCREENSHOTS
from test_page_a11y import contrast

from tokstep.web.compare_section import AUTORUN_STEPS

pytest_plugins = ["model_choice_support"]

WAIT_MS = 30_000
VIEWPORTS = {
    "desktop": ({"width": 1200, "height": 1000}, ""),
    "phone-390": ({"width": 390, "height": 844}, ""),
    "dark": ({"width": 1200, "height": 1000}, "?__theme=dark"),
}


def rows(tab) -> int:
    return tab.locator("#compare-table tbody tr").count()


def wait_for_rows(tab, count: int) -> None:
    tab.wait_for_function(
        "n => document.querySelectorAll('#compare-table tbody tr').length === n", arg=count, timeout=WAIT_MS
    )


@pytest.mark.parametrize("view", list(VIEWPORTS))
def test_both_models_step_from_the_keyboard_and_the_table_fits(browser, choice_server_url, view):
    viewport, query = VIEWPORTS[view]
    phone = viewport["width"] < 500
    context = browser.new_context(viewport=viewport, is_mobile=phone, has_touch=phone)
    try:
        tab = context.new_page()
        tab.goto(choice_server_url + query)
        tab.wait_for_selector("#tokens .token", timeout=WAIT_MS)
        tab.locator("#compare").get_by_text("Two models side by side").first.click()
        step = tab.locator("#compare-step")
        step.wait_for(state="visible", timeout=WAIT_MS)
        # Keyboard: Step both with Enter, Auto-run both with Space.
        step.focus()
        tab.keyboard.press("Enter")
        wait_for_rows(tab, 1)
        tab.locator("#compare-autorun").focus()
        tab.keyboard.press("Space")
        wait_for_rows(tab, 1 + AUTORUN_STEPS)
        status = tab.inner_text("#compare-status")
        assert "aligned by position" in status and f"{1 + AUTORUN_STEPS} rows" in status
        headers = tab.locator("#compare-table thead th").all_inner_texts()
        assert headers[0] == "#" and headers[-1] == "Same?"
        # Nothing told by colour alone: every finished row says whether the models agree.
        marks = tab.locator("#compare-table tbody tr td:last-child").all_inner_texts()
        assert all(mark.startswith(("✓ same", "≠ differ")) for mark in marks)
        table = tab.locator("#compare-table table").bounding_box()
        assert table["x"] >= 0 and table["x"] + table["width"] <= viewport["width"]
        assert tab.evaluate("document.documentElement.scrollWidth") <= viewport["width"]  # no sideways scroll
        for selector in ("#compare-table tbody td", "#compare-table thead th"):
            assert contrast(tab, selector) >= 4.5
        tab.locator("#compare").screenshot(path=str(SCREENSHOTS / f"compare-{view}.png"))
    finally:
        context.close()
