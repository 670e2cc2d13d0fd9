"""Model choice in a real browser (Chromium + Playwright): picking a model in the dropdown shows
that it is loading and then its tokens, a model that fails to load says so and leaves the page
working, and a `model=` link opens on that model (Copy link keeps it)."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import quote

import pytest
from conftest import SCREENSHOTS, open_save_share, serving, token_labels, wait_for_count
from test_teachers_browser import labels_of, open_page

pytest_plugins = ["model_choice_support"]

PROMPT = "Once upon a time"

# Every text the status line shows, recorded as it changes: a quick load still leaves its mark.
WATCH_STATUS_JS = """
() => {
  window.statusSeen = [];
  const status = document.querySelector('#status');
  new MutationObserver(() => window.statusSeen.push(status.innerText))
    .observe(status, {childList: true, subtree: true, characterData: true});
}
"""


@pytest.fixture
def fresh_url(tiny_lm, other_model_dir, broken_model_dir) -> Iterator[str]:
    """A server of its own, so the other model is not loaded yet when a test picks it."""
    from tokstep.web.page import create_demo

    with serving(create_demo(tiny_lm, models=[str(other_model_dir), str(broken_model_dir)])) as url:
        yield url


def pick_model(tab, name: str) -> None:
    tab.click("#model input")
    tab.get_by_role("option", name=name, exact=True).click()


def pick_model_by_keyboard(tab, name: str) -> None:
    """Arrow keys down the open list to `name`, then Enter, as a keyboard user picks it."""
    box = tab.locator("#model input")
    box.focus()
    tab.wait_for_selector("#model [role=option]")
    for _ in range(10):
        before = box.get_attribute("aria-activedescendant")
        tab.keyboard.press("ArrowDown")
        # The list moves on a frame later: read the active option only once it has moved.
        tab.wait_for_function(
            "(before) => document.querySelector('#model input').getAttribute('aria-activedescendant') !== before",
            arg=before,
        )
        active = box.get_attribute("aria-activedescendant")
        if tab.locator(f"#{active}").get_attribute("aria-label") == name:
            tab.keyboard.press("Enter")
            return
    raise AssertionError(f"{name} is not in the Model list")


def shown_model(tab) -> str:
    return tab.locator("#model input").input_value()


def wait_for_status(tab, text: str, timeout_ms: float = 30_000) -> None:
    tab.wait_for_function(f"document.querySelector('#status').innerText.includes({text!r})", timeout=timeout_ms)


def test_picking_a_model_shows_it_loading_then_steps_with_it(tab, fresh_url, tiny_lm, other_lm, other_model_dir):
    assert open_page(tab, fresh_url, len(labels_of(tiny_lm, PROMPT, 0))) == labels_of(tiny_lm, PROMPT, 0)
    assert shown_model(tab) == tiny_lm.name
    tab.click("#step")
    wait_for_count(tab, len(labels_of(tiny_lm, PROMPT, 1)))
    tab.evaluate(WATCH_STATUS_JS)

    pick_model(tab, str(other_model_dir))
    wait_for_status(tab, "Switched to")
    seen = tab.evaluate("window.statusSeen")
    assert any(f"Loading {other_model_dir}" in text for text in seen), seen  # the progress shown
    # Started over from the prompt on the new model: the prompt chips, and its own candidates.
    assert wait_for_count(tab, len(labels_of(other_lm, PROMPT, 0))) == labels_of(other_lm, PROMPT, 0)
    assert shown_model(tab) == str(other_model_dir)
    for steps in (1, 2):  # one at a time: a click while a Step is pending is ignored
        tab.click("#step")
        assert wait_for_count(tab, len(labels_of(other_lm, PROMPT, steps))) == labels_of(other_lm, PROMPT, steps)
    assert labels_of(other_lm, PROMPT, 2) != labels_of(tiny_lm, PROMPT, 2)
    tab.screenshot(path=str(SCREENSHOTS / "model-choice.png"), full_page=True)


def test_a_failed_load_says_so_and_the_page_keeps_working(tab, choice_server_url, tiny_lm, broken_model_dir):
    open_page(tab, choice_server_url, len(labels_of(tiny_lm, PROMPT, 0)))
    tab.click("#step")
    before = wait_for_count(tab, len(labels_of(tiny_lm, PROMPT, 1)))

    pick_model_by_keyboard(tab, str(broken_model_dir))
    tab.wait_for_selector("text=Could not switch to")  # the pop-up
    wait_for_status(tab, f"The page stays on '{tiny_lm.name}'")
    tab.wait_for_function(f"document.querySelector('#model input').value === {tiny_lm.name!r}")
    assert token_labels(tab) == before  # nothing lost
    tab.screenshot(path=str(SCREENSHOTS / "model-choice-failed.png"), full_page=True)
    tab.click("#step")  # Step still works, on the current model
    assert wait_for_count(tab, len(before) + 1) == labels_of(tiny_lm, PROMPT, 2)


def test_a_model_link_opens_on_that_model_and_copy_link_keeps_it(tab, browser, choice_server_url, other_lm):
    name = other_lm.name
    expected = labels_of(other_lm, PROMPT, 3)
    url = f"{choice_server_url}?prompt={quote(PROMPT)}&steps=3&model={quote(name)}"
    assert open_page(tab, url, len(expected)) == expected
    assert shown_model(tab) == name
    tab.click("#step")  # the session runs the link's model
    assert wait_for_count(tab, len(expected) + 1) == labels_of(other_lm, PROMPT, 4)

    open_save_share(tab)
    tab.click("#copy-link")
    tab.wait_for_function("document.querySelector('#link textarea').value.startsWith('http')")
    link = tab.locator("#link textarea").input_value()
    assert "steps=4" in link and f"model={quote(name, safe='')}" in link
    other = browser.new_context(viewport={"width": 1200, "height": 1000})
    try:
        assert open_page(other.new_page(), link, len(expected) + 1) == labels_of(other_lm, PROMPT, 4)
    finally:
        other.close()


def test_a_link_to_a_model_off_the_list_says_why_and_uses_the_default(tab, choice_server_url, tiny_lm):
    expected = labels_of(tiny_lm, PROMPT, 2)
    assert open_page(tab, f"{choice_server_url}?prompt={quote(PROMPT)}&steps=2&model=gpt2", len(expected)) == expected
    wait_for_status(tab, "The link has a problem: The model 'gpt2' is not offered here")
    assert shown_model(tab) == tiny_lm.name
