"""The README's screenshots come from here, taken on the bundled model in a real browser.

Set TOKSTEP_UPDATE_DOCS=1 to write them into docs/ (otherwise they go to test-artifacts/)."""

from __future__ import annotations

import os
import shutil

import pytest
from conftest import ROOT, SCREENSHOTS, token_labels, wait_for_count

SHOTS = {
    "screenshot.png": {"viewport": {"width": 1280, "height": 800}, "color_scheme": "light"},
    "screenshot-dark.png": {"viewport": {"width": 1280, "height": 800}, "color_scheme": "dark"},
    "screenshot-phone.png": {"viewport": {"width": 390, "height": 844}, "color_scheme": "light", "is_mobile": True},
}


@pytest.mark.parametrize("name", SHOTS)
def test_readme_screenshot(browser, bundled_server_url, name):
    options = SHOTS[name]
    context = browser.new_context(**options)
    page = context.new_page()
    try:
        theme = options["color_scheme"]
        page.goto(f"{bundled_server_url}?__theme={theme}")
        page.wait_for_selector("#tokens .token")
        n_prompt = len(token_labels(page))
        for count in range(1, 7):
            page.click("#step")
            wait_for_count(page, n_prompt + count)
        page.locator("#topk").scroll_into_view_if_needed()
        page.evaluate("window.scrollTo(0, 0)")
        path = SCREENSHOTS / f"readme-{name}"
        page.screenshot(path=str(path), full_page=False)
    finally:
        context.close()
    if os.environ.get("TOKSTEP_UPDATE_DOCS") == "1":
        shutil.copyfile(path, ROOT / "docs" / name)
    assert (ROOT / "docs" / name).is_file(), f"docs/{name} is missing: run with TOKSTEP_UPDATE_DOCS=1"
    assert f"docs/{name}" in (ROOT / "README.md").read_text(encoding="utf-8")
