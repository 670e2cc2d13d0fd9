"""A reloaded tab gets its run back from the browser's storage, in a real Chromium: the same token
chips (ids, ranks, picks) after a reload, after a restart of a server with the same pinned storage
key and secret, and the prompt's fresh state, with no error, when the secret is another."""

from __future__ import annotations

import time
from urllib.parse import quote

from conftest import free_port, serving, token_labels, wait_for_count

import tokstep
from tokstep.core.model import LanguageModel
from tokstep.web.browser_run import DEFAULT_STORAGE_KEY, BrowserStorage
from tokstep.web.constants import DEFAULT_PROMPT, DEFAULT_TOP_K
from tokstep.web.page import create_demo

WAIT_S = 30  # generous: the suite runs on busy machines


def stored(tab, key: str) -> str | None:
    """What the tab's localStorage holds under `key` (Gradio's encrypted text)."""
    return tab.evaluate("key => localStorage.getItem(key)", key)


def kept_after(tab, key: str, action) -> None:
    """Do `action`, then wait until the browser has stored the tab's run again: each write is new
    text (Gradio encrypts with a fresh IV), so a changed value is the store that followed the action."""
    before = stored(tab, key)
    action()
    deadline = time.monotonic() + WAIT_S
    while stored(tab, key) == before:
        assert time.monotonic() < deadline, "the page did not store its run after the event"
        time.sleep(0.05)


def step(tab, key: str) -> None:
    count = len(token_labels(tab))
    kept_after(tab, key, lambda: (tab.click("#step"), wait_for_count(tab, count + 1, timeout=WAIT_S)))


def open_page(tab, url: str, key: str) -> list[str]:
    """Open the page and wait for its first state, and for the browser to have stored it."""
    tab.goto(url)
    tab.wait_for_selector("#tokens .token")
    deadline = time.monotonic() + WAIT_S
    while stored(tab, key) is None:
        assert time.monotonic() < deadline, "the page did not store its first state"
        time.sleep(0.05)
    return token_labels(tab)


def reload(tab) -> list[str]:
    tab.reload()
    tab.wait_for_selector("#tokens .token")
    time.sleep(0.5)  # the page's load event has run: nothing further may change the chips
    return token_labels(tab)


def prompt_labels(lm: LanguageModel, prompt: str = DEFAULT_PROMPT) -> list[str]:
    return [str(token_id) for token_id in tokstep.tokenize(lm.tokenizer, prompt)]


def expected_after_steps_a_pick_and_an_undo(lm: LanguageModel) -> tuple[list[str], str]:
    """What the chips read after Step, Step, a pick of the 3rd candidate, Step, Undo (derived from the
    stepper), and the greedy token's label that a Step after them appends."""
    stepper = tokstep.TokenStepper.from_text(lm, DEFAULT_PROMPT)
    labels = prompt_labels(lm)
    for _ in range(2):
        step = stepper.step(DEFAULT_TOP_K)
        labels.append(f"+{step.token_id} · #{step.rank}")
    third = stepper.next_top(DEFAULT_TOP_K)[0][2].token_id
    picked = stepper.step(DEFAULT_TOP_K, token_id=third)
    labels.append(f"+{picked.token_id} · #{picked.rank} picked")
    stepper.step(DEFAULT_TOP_K)
    stepper.undo()
    after = stepper.step(DEFAULT_TOP_K)
    return labels, f"+{after.token_id} · #{after.rank}"


def test_a_reloaded_tab_gets_its_run_back(page, tiny_lm):
    key = DEFAULT_STORAGE_KEY  # the session's server pins nothing: the default key, Gradio's own secret
    expected, next_label = expected_after_steps_a_pick_and_an_undo(tiny_lm)
    open_page(page, page.url, key)
    step(page, key)
    step(page, key)
    count = len(token_labels(page))
    kept_after(page, key, lambda: (page.locator("#topk button").nth(2).click(), wait_for_count(page, count + 1)))
    step(page, key)
    kept_after(page, key, lambda: (page.click("#undo"), wait_for_count(page, count + 1)))
    before, text = token_labels(page), page.locator("#text textarea").input_value()
    assert before == expected

    assert reload(page) == expected
    assert page.locator("#text textarea").input_value() == text
    assert "Restored this tab's run" in page.inner_text("#status")
    step(page, key)  # the restored run goes on as the old one would have
    assert token_labels(page) == [*expected, next_label]


def test_a_restarted_server_with_the_same_pinned_key_and_secret_restores_the_run(tab, tiny_lm):
    storage = BrowserStorage(key="tokstep-test-run", secret="the same secret")
    port = free_port()
    with serving(create_demo(tiny_lm, browser_storage=storage), port=port) as url:
        open_page(tab, url, storage.key)
        for _ in range(3):
            step(tab, storage.key)
        before = token_labels(tab)
    assert len(before) == len(prompt_labels(tiny_lm)) + 3
    with serving(create_demo(tiny_lm, browser_storage=storage), port=port):
        assert reload(tab) == before


def test_another_secret_shows_the_prompt_fresh_without_an_error(tab, tiny_lm):
    port, key = free_port(), "tokstep-test-secret"
    with serving(create_demo(tiny_lm, browser_storage=BrowserStorage(key, "the first secret")), port=port) as url:
        open_page(tab, url, key)
        for _ in range(3):
            step(tab, key)
        assert len(token_labels(tab)) == len(prompt_labels(tiny_lm)) + 3
    with serving(create_demo(tiny_lm, browser_storage=BrowserStorage(key, "another secret")), port=port):
        assert reload(tab) == prompt_labels(tiny_lm)
        assert tab.locator(".toast-body").count() == 0
        assert "⚠️" not in tab.inner_text("#status") and "Restored" not in tab.inner_text("#status")
        step(tab, key)  # and the page works as usual


def test_a_link_wins_over_the_stored_run(page, tiny_lm):
    key = DEFAULT_STORAGE_KEY
    open_page(page, page.url, key)
    for _ in range(3):
        step(page, key)
    link_prompt = "The little dog"
    expected = prompt_labels(tiny_lm, link_prompt) + [
        f"+{s.token_id} · #{s.rank}" for s in tokstep.generate_steps(tiny_lm, link_prompt, max_new_tokens=1)
    ]
    page.goto(f"{page.url.split('?')[0]}?prompt={quote(link_prompt)}&steps=1")
    assert wait_for_count(page, len(expected), timeout=WAIT_S) == expected
    time.sleep(0.5)
    assert token_labels(page) == expected
