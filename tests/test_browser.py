"""The page in a real browser (Debian's Chromium driven by Playwright): Step, Auto-run,
Stop and Reset as a person uses them."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

import tokstep

CHROMIUM = os.environ.get("TOKSTEP_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "screenshots"
PROMPT = "Once upon a time"

if not Path(CHROMIUM).exists():
    # The README's test command installs Chromium; in CI a missing browser is a failure.
    if os.environ.get("CI"):
        raise RuntimeError(f"{CHROMIUM} is missing: install Debian's chromium package")
    pytest.skip(f"{CHROMIUM} is not installed", allow_module_level=True)

from playwright.sync_api import Page, sync_playwright  # noqa: E402


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server_url) -> Page:
    context = browser.new_context(viewport={"width": 1200, "height": 1000})
    page = context.new_page()
    page.goto(server_url)
    yield page
    context.close()


def token_labels(page: Page) -> list[str]:
    return page.locator("#tokens .token .label").all_inner_texts()


def wait_for_count(page: Page, count: int, timeout: float = 15) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        labels = token_labels(page)
        if len(labels) == count:
            return labels
        time.sleep(0.05)
    raise AssertionError(f"expected {count} tokens on the page, saw {token_labels(page)}")


def test_step_autorun_stop_reset_in_a_real_browser(page, tiny_lm):
    prompt_ids = tokstep.tokenize(tiny_lm.tokenizer, PROMPT)
    greedy = [s.token_id for s in tokstep.generate_steps(tiny_lm, PROMPT, max_new_tokens=30)]
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    assert wait_for_count(page, len(prompt_ids)) == [str(i) for i in prompt_ids]
    first_heading = page.locator("#topk [data-testid='label-output-value']").inner_text()

    page.click("#step")
    labels = wait_for_count(page, len(prompt_ids) + 1)
    assert labels[-1] == f"+{greedy[0]}"  # exactly one token, the greedy one, marked as generated
    page.wait_for_function(
        "h => document.querySelector(\"#topk [data-testid='label-output-value']\").innerText !== h", arg=first_heading
    )
    page.screenshot(path=str(SCREENSHOTS / "after-step.png"), full_page=True)

    # Auto-run at the default pace: tokens appear one by one.
    page.click("#autorun")
    seen: list[int] = []
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:
        count = len(token_labels(page))
        if not seen or count != seen[-1]:
            seen.append(count)
        time.sleep(0.03)
    page.click("#stop")
    intermediate = [c for c in seen if len(prompt_ids) + 1 < c]
    assert len(intermediate) >= 3, f"expected tokens to arrive one at a time, saw counts {seen}"
    assert all(b == a + 1 for a, b in zip(seen, seen[1:], strict=False)), f"one token per update: {seen}"
    time.sleep(1.0)
    stopped_at = len(token_labels(page))
    time.sleep(1.2)  # the default pace is 3 tokens/s: a run still going would add more
    labels = token_labels(page)
    assert len(labels) == stopped_at < len(prompt_ids) + 20
    assert labels[len(prompt_ids) :] == [f"+{i}" for i in greedy[: stopped_at - len(prompt_ids)]]
    page.screenshot(path=str(SCREENSHOTS / "after-stop.png"), full_page=True)

    page.click("#reset")
    assert wait_for_count(page, len(prompt_ids)) == [str(i) for i in prompt_ids]


def test_editing_the_prompt_starts_over_in_the_browser(page, tiny_lm):
    n_prompt = len(tokstep.tokenize(tiny_lm.tokenizer, PROMPT))
    wait_for_count(page, n_prompt)
    page.click("#step")
    wait_for_count(page, n_prompt + 1)
    page.locator("#prompt textarea").fill("The little dog")
    expected = tokstep.tokenize(tiny_lm.tokenizer, "The little dog")
    assert wait_for_count(page, len(expected)) == [str(i) for i in expected]


def test_html_in_the_prompt_is_shown_as_text(page):
    page.locator("#prompt textarea").fill('<img src=x onerror="window.pwned=1"><script>window.pwned=2</script>')
    page.wait_for_function("document.querySelectorAll('#tokens .token').length > 5")
    page.click("#step")
    time.sleep(1.0)
    assert page.evaluate("window.pwned") is None
    assert "<script>" in page.locator("#text textarea").input_value()
