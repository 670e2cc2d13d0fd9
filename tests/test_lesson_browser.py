"""A lesson that reads on one screen, in a real browser, on a desktop (1280×800) and a phone (390×844)
and in both themes: what a student watches is visible without scrolling, the buttons stay reachable on a
phone, the top-k's percentages are honest and have no duplicate headline, a running Auto-run shows on its
button and holds Step, Undo names its token, the legend has the model's ids, saving and sharing sit in
one collapsed accordion, and the chat section offers a chat model before anyone types."""

from __future__ import annotations

import re

import pytest
from conftest import SCREENSHOTS, serving, token_labels, wait_for_count

import tokstep
from tokstep.web.page import create_demo

SIZES = {"desktop": {"width": 1280, "height": 800}, "phone": {"width": 390, "height": 844}}
WAIT_MS = 30_000  # generous: the suite runs on busy machines


@pytest.fixture(scope="module")
def lesson_url(tiny_lm):
    """The tiny model (no chat template) with the bundled chat model on the page's list."""
    if "tinystories-chat" not in tokstep.bundled_models():
        pytest.skip("the bundled chat model is not there")
    with serving(create_demo(tiny_lm, models=["tinystories-chat"])) as url:
        yield url


def open_tab(browser, url: str, size: str, theme: str):
    context = browser.new_context(viewport=SIZES[size], color_scheme=theme, is_mobile=size == "phone")
    tab = context.new_page()
    tab.goto(f"{url}?__theme={theme}")
    tab.wait_for_selector("#tokens .token")
    return context, tab


def step(tab, times: int) -> None:
    before = len(token_labels(tab))
    for count in range(1, times + 1):
        tab.click("#step")
        wait_for_count(tab, before + count, timeout=30)


def in_view(tab, selector: str) -> bool:
    """Whether the element lies wholly inside the viewport as the page is scrolled now."""
    return tab.locator(selector).first.evaluate(
        "e => { const r = e.getBoundingClientRect();"
        " return r.top >= 0 && r.left >= 0 && r.bottom <= innerHeight && r.right <= innerWidth; }"
    )


@pytest.mark.parametrize("theme", ["light", "dark"])
@pytest.mark.parametrize("size", SIZES)
def test_the_lesson_reads_on_one_screen(browser, lesson_url, size, theme):
    context, tab = open_tab(browser, lesson_url, size, theme)
    try:
        assert tab.evaluate("document.body.classList.contains('dark')") == (theme == "dark")
        step(tab, 3)
        tab.evaluate("window.scrollTo(0, 0)")
        if size == "desktop":
            for selector in ["#tokens", "#topk", "#status", "#step", "#autorun", "#mode"]:
                assert in_view(tab, selector), f"{selector} is not on the first screen at 1280×800"
        else:
            prompt_top = tab.locator("#prompt").bounding_box()["y"]
            for selector in ["#tokens", "#topk"]:
                box = tab.locator(selector).bounding_box()
                assert box["y"] + box["height"] <= prompt_top + SIZES["phone"]["height"], f"{selector} is too far down"
            # The buttons stay reachable: scrolled far down, they are still on the screen.
            tab.evaluate("window.scrollTo(0, document.body.scrollHeight)")
            tab.wait_for_timeout(300)
            for selector in ["#step", "#autorun", "#stop"]:
                assert in_view(tab, selector), f"{selector} scrolled away on a phone"
            tab.evaluate("window.scrollTo(0, 0)")
        # Saving and sharing: one collapsed accordion, every control still there.
        assert tab.locator("#save-share").count() == 1 and not tab.locator("#copy-link").is_visible()
        tab.locator("#save-share").get_by_text("Save and share").click()
        tab.locator("#copy-link").wait_for(state="visible", timeout=WAIT_MS)
        for element_id in ["export", "import", "link", "export-file"]:
            assert tab.locator(f"#{element_id}").count() == 1
        tab.screenshot(path=str(SCREENSHOTS / f"lesson-{size}-{theme}.png"))
    finally:
        context.close()


def test_top_k_percentages_are_honest_and_have_no_duplicate_headline(browser, lesson_url):
    context, tab = open_tab(browser, lesson_url, "desktop", "light")
    try:
        step(tab, 1)
        tab.wait_for_function(
            "() => [...document.querySelectorAll('#topk .confidence')].every(c => c.textContent !== '0%')",
            timeout=WAIT_MS,
        )
        shown = tab.locator("#topk .confidence").all_text_contents()
        assert shown and all(re.fullmatch(r"<0\.1%|\d+(\.\d)?%", text) for text in shown), shown
        assert not tab.locator("#topk [data-testid='label-output-value']").is_visible()  # no headline
        # Screen readers hear the same numbers.
        assert tab.locator("#topk meter").first.get_attribute("aria-valuetext") == shown[0]
    finally:
        context.close()


def test_a_running_autorun_shows_on_its_button_and_holds_step(browser, lesson_url):
    context, tab = open_tab(browser, lesson_url, "desktop", "light")
    try:
        tab.locator("#autorun-tokens input[type='number']").fill("40")
        tab.locator("#autorun-tokens input[type='number']").press("Enter")
        tab.locator("#speed input[type='number']").fill("2")
        tab.locator("#speed input[type='number']").press("Enter")
        tab.wait_for_timeout(500)
        tab.click("#autorun")
        tab.locator("#autorun", has_text=re.compile(r"Running… \d+ left")).wait_for(timeout=WAIT_MS)
        assert tab.locator("#step").is_disabled()
        tab.click("#stop")
        tab.locator("#autorun", has_text=re.compile(r"^\s*Auto-run\s*$")).wait_for(timeout=WAIT_MS)
        tab.wait_for_function("() => !document.querySelector('#step').disabled", timeout=WAIT_MS)
    finally:
        context.close()


def test_undo_names_its_token_and_the_legend_has_the_models_ids(browser, lesson_url, tiny_lm):
    context, tab = open_tab(browser, lesson_url, "desktop", "light")
    try:
        once = tiny_lm.tokenizer.encode("Once")[0]
        assert f"Once {once}" in tab.inner_text("#legend")
        step(tab, 1)
        last = token_labels(tab)[-1]
        token_id = int(last.split()[0].lstrip("+"))
        tab.click("#undo")
        tab.locator("#status", has_text=f"(id {token_id})").wait_for(timeout=WAIT_MS)
        assert "Took back" in tab.inner_text("#status")
    finally:
        context.close()


def test_chat_offers_a_chat_model_before_anyone_types_and_a_turn_works_offline(browser, lesson_url):
    context, tab = open_tab(browser, lesson_url, "desktop", "light")
    try:
        tab.locator("#chat-mode").get_by_text("Chat mode: step through").first.click()
        tab.locator("#chat-no-template", has_text="has no chat template").wait_for(timeout=WAIT_MS)
        switch = tab.locator("#chat-switch")
        assert switch.inner_text() == "Switch the page to tinystories-chat"
        # Send without a template: one pop-up with the code's own title, and no "Error" anywhere.
        tab.locator("#chat-message textarea").fill("Tell me a story about a cat.")
        tab.click("#chat-send")
        toast = tab.locator(".toast-body", has_text="no chat template").first
        toast.wait_for(timeout=WAIT_MS)
        assert "Cannot send:" in toast.inner_text()  # the title the code sets (see tokstep.web.checks.titled)
        assert "Error" not in tab.inner_text("#chat")
        assert tab.locator("#chat-message textarea").input_value() == "Tell me a story about a cat."
        # The button switches the page's model; the notice goes, and the chat works on it.
        switch.click()
        tab.locator("#status", has_text="Switched to **tinystories-chat**".replace("**", "")).wait_for(timeout=60_000)
        tab.locator("#chat-no-template-row").wait_for(state="hidden", timeout=WAIT_MS)
        tab.click("#chat-send")
        tab.locator("#chat-bot [data-testid='user']", has_text="Tell me a story").wait_for(timeout=WAIT_MS)
        for count in range(1, 4):
            tab.click("#chat-step")
            tab.wait_for_function(
                "n => document.querySelectorAll('#chat-tokens .token').length === n", arg=count, timeout=WAIT_MS
            )
        assert tab.locator("#chat-bot [data-testid='bot']").inner_text().strip()
        tab.screenshot(path=str(SCREENSHOTS / "lesson-chat.png"), full_page=True)
    finally:
        context.close()


def test_byte_tokens_that_make_one_character_are_grouped_and_explained(browser, lesson_url, tiny_lm):
    context, tab = open_tab(browser, lesson_url, "desktop", "light")
    try:
        ids = tiny_lm.tokenizer.encode("I love 🍣")
        pieces = [i for i in ids if "\\x" in tiny_lm.texts.text(i)]
        assert len(pieces) >= 2  # GPT-2 splits the sushi into byte tokens
        tab.locator("#prompt textarea").fill("I love 🍣")
        wait_for_count(tab, len(ids), timeout=30)
        group = tab.locator("#tokens .token.byte-group")
        group.first.wait_for(timeout=WAIT_MS)
        assert group.count() == len(pieces)
        explanation = f"these {len(pieces)} byte tokens together make 🍣"
        assert group.first.get_attribute("title") == explanation
        described = group.first.get_attribute("aria-describedby")
        assert tab.locator(f"#{described}").text_content() == explanation  # what a screen reader announces
        assert group.first.get_attribute("tabindex") == "0"  # reachable by keyboard, so focus shows it too
    finally:
        context.close()


def test_step_stops_at_the_end_of_text_and_continue_goes_past_it(browser, lesson_url):
    context, tab = open_tab(browser, lesson_url, "desktop", "dark")
    try:
        tab.locator("#prompt textarea").fill("The end.<|endoftext|>")
        tab.locator("#tokens .token .label", has_text="50256").first.wait_for(timeout=WAIT_MS)
        count = len(token_labels(tab))
        tab.click("#step")
        tab.locator("#status", has_text="End of text:").wait_for(timeout=WAIT_MS)
        assert len(token_labels(tab)) == count  # Step stopped at the end
        tab.click("#continue")
        assert wait_for_count(tab, count + 1, timeout=30)[-1].startswith("+")
    finally:
        context.close()


@pytest.mark.parametrize("size", SIZES)
def test_offline_the_dropdown_marks_a_model_that_cannot_load(browser, tiny_lm, monkeypatch, size):
    """Offline, a listed model that is neither bundled, a folder nor cached is offered as unavailable,
    with its reason in words (no exception class names), and choosing it leaves the page as it was."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    missing = "tokstep-test/no-such-model-anywhere"
    with serving(create_demo(tiny_lm, models=[missing])) as url:
        context, tab = open_tab(browser, url, size, "light")
        try:
            tab.click("#model input")
            option = tab.get_by_role("option", name=re.compile("no-such-model-anywhere"))
            option.wait_for()
            assert "(unavailable: not downloaded, and this server is offline)" in option.inner_text()
            before = token_labels(tab)
            option.click()
            tab.wait_for_function(
                "() => document.querySelector('#status').innerText.includes('unavailable here')", timeout=30000
            )
            status = tab.locator("#status").inner_text()
            assert "Error" not in status and "Exception" not in status
            assert token_labels(tab) == before  # the tab keeps its tokens and its model
            tab.screenshot(path=str(SCREENSHOTS / f"offline-dropdown-{size}.png"), full_page=True)
        finally:
            context.close()
