"""Exploring choices in a real browser: take an alternative from the label, undo three
times, auto-run with a seed twice for the same text, and see the colours and the legend."""

from __future__ import annotations

import time

from conftest import SCREENSHOTS, token_labels, wait_for_count

from tokstep.web.assets import RANK_COLORS


def rgb(hex_colour: str) -> str:
    r, g, b = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgb({r}, {g}, {b})"


def set_slider(page, elem_id: str, value: float) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def autorun_text(page, n_prompt: int, n_tokens: int) -> str:
    page.click("#reset")
    wait_for_count(page, n_prompt)
    page.click("#autorun")
    wait_for_count(page, n_prompt + n_tokens)
    time.sleep(0.3)
    return page.locator("#text textarea").input_value()


def test_pick_undo_seeded_autorun_colours_and_legend(page):
    n_prompt = len(token_labels(page))
    heading = page.locator("#topk [data-testid='label-output-value']")
    first_heading = heading.inner_text()

    # Take the second most likely token instead of the first.
    second = page.locator("#topk dt").nth(1).inner_text()  # e.g. "␣malt (26868)"
    second_id = second.rsplit("(", 1)[1].rstrip(")")
    page.locator("#topk button").nth(1).click()
    labels = wait_for_count(page, n_prompt + 1)
    assert labels[-1] == f"+{second_id} · #2 picked"
    picked_colour = (
        page.locator("#tokens .token .label").nth(n_prompt).evaluate("e => getComputedStyle(e).backgroundColor")
    )
    assert picked_colour == rgb(RANK_COLORS["top 10"])
    assert "picked by you" in page.inner_text("#status")

    # Two greedy steps on top, then undo three times: the page is back where it began.
    page.click("#step")
    wait_for_count(page, n_prompt + 2)
    page.click("#step")
    wait_for_count(page, n_prompt + 3)
    for remaining in (2, 1, 0):
        page.click("#undo")
        wait_for_count(page, n_prompt + remaining)
    page.wait_for_function(
        "h => document.querySelector(\"#topk [data-testid='label-output-value']\").innerText === h", arg=first_heading
    )

    # Seeded sampling: the same seed gives the same text twice.
    page.click("#choosing button, #choosing .label-wrap")
    page.get_by_label("Sample (seeded)").check()
    set_slider(page, "autorun-tokens", 6)
    set_slider(page, "speed", 20)
    page.locator("#seed input").fill("11")
    page.locator("#seed input").press("Enter")
    time.sleep(0.8)
    first = autorun_text(page, n_prompt, 6)
    second_run = autorun_text(page, n_prompt, 6)
    assert first == second_run
    assert all(label.endswith(" sampled") for label in token_labels(page)[n_prompt:])

    # The legend explains every colour and mark, and is on the page.
    legend = page.locator("#legend")
    assert legend.is_visible()
    for words in ("#1", "#2–10", "#11–100", "beyond 100", "picked", "sampled"):
        assert words in legend.inner_text()
    page.screenshot(path=str(SCREENSHOTS / "explore-sampled.png"), full_page=True)
