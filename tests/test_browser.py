"""The page in a real browser (Debian's Chromium driven by Playwright): Step, Auto-run,
Stop and Reset as a person uses them."""

from __future__ import annotations

import time

from conftest import SCREENSHOTS, token_labels, wait_for_count

import tokstep

PROMPT = "Once upon a time"


def test_step_autorun_stop_reset_in_a_real_browser(page, tiny_lm):
    prompt_ids = tokstep.tokenize(tiny_lm.tokenizer, PROMPT)
    greedy = [s.token_id for s in tokstep.generate_steps(tiny_lm, PROMPT, max_new_tokens=30)]

    assert wait_for_count(page, len(prompt_ids)) == [str(i) for i in prompt_ids]
    first_heading = page.locator("#topk [data-testid='label-output-value']").inner_text()

    page.click("#step")
    labels = wait_for_count(page, len(prompt_ids) + 1)
    assert labels[-1] == f"+{greedy[0]} · #1"  # exactly one token, the greedy one (rank 1), marked +
    page.wait_for_function(
        "h => document.querySelector(\"#topk [data-testid='label-output-value']\").innerText !== h", arg=first_heading
    )
    page.screenshot(path=str(SCREENSHOTS / "after-step.png"), full_page=True)

    # Auto-run at the default pace: tokens appear one by one. The page itself records the number of
    # tokens after every change of the chips (a MutationObserver runs after each update the page
    # applies), so a busy machine that is slow to poll cannot merge two updates into one.
    page.evaluate(
        """() => {
          window.tokenCounts = [];
          const count = () => document.querySelectorAll("#tokens .token .label").length;
          new MutationObserver(() => {
            const n = count();
            if (window.tokenCounts.at(-1) !== n) { window.tokenCounts.push(n); }
          }).observe(document.querySelector("#tokens"), {childList: true, subtree: true, characterData: true});
          window.tokenCounts.push(count());
        }"""
    )
    page.click("#autorun")
    time.sleep(4)
    page.click("#stop")
    seen: list[int] = page.evaluate("() => window.tokenCounts")
    intermediate = [c for c in seen if len(prompt_ids) + 1 < c]
    assert len(intermediate) >= 3, f"expected tokens to arrive one at a time, saw counts {seen}"
    assert all(b == a + 1 for a, b in zip(seen, seen[1:], strict=False)), f"one token per update: {seen}"
    time.sleep(1.0)
    stopped_at = len(token_labels(page))
    time.sleep(1.2)  # the default pace is 3 tokens/s: a run still going would add more
    labels = token_labels(page)
    assert len(labels) == stopped_at < len(prompt_ids) + 20
    assert labels[len(prompt_ids) :] == [f"+{i} · #1" for i in greedy[: stopped_at - len(prompt_ids)]]
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
