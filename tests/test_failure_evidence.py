"""A failed browser test leaves what its tabs showed (conftest saves them under test-artifacts/failures/)."""

from __future__ import annotations

import time

from conftest import save_open_tabs, token_labels

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_every_open_tab_is_saved_and_a_hung_one_is_named(browser, page, tab, tmp_path):
    hung_url = "data:text/html,<title>busy</title><p>busy"
    tab.goto(hung_url)
    # The page's own thread never yields again: no frame can be drawn, as when a page hangs.
    tab.evaluate("setTimeout(() => { for (;;) {} }, 0)")
    time.sleep(0.2)
    # A hung tab costs its 5 s timeout and is listed, rather than hanging the test.
    listing = save_open_tabs(browser, "self-check", tmp_path)

    lines = listing.read_text().splitlines()
    assert len(lines) == sum(len(context.pages) for context in browser.contexts)  # one line per tab
    saved = [line for line in lines if line.endswith(page.url)]
    assert len(saved) == 1
    png = listing.parent / saved[0].split(":", 1)[0]
    assert png.read_bytes().startswith(PNG_SIGNATURE)
    (hung,) = [line for line in lines if hung_url in line]
    assert "no screenshot" in hung and "Timeout" in hung
    assert token_labels(page)  # the working tab is still there to use
