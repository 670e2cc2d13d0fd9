"""The "Paths you tried" section in a real browser (Chromium + Playwright, a real server): after a
Step, an Undo and a pick of another candidate the tree shows both branches with the model's
probability of each, and the keyboard alone goes back to the first branch, whose tokens the chips
then show. Screenshots at desktop and phone width and in the dark theme go to test-artifacts/."""

from __future__ import annotations

import time

import pytest
from conftest import SCREENSHOTS, token_labels, wait_for_count
from test_page_a11y import contrast

from tokstep.core.stepper import Step, TokenStepper
from tokstep.core.tokens import visible_whitespace
from tokstep.web.path_tree_view import HOW_CHOSEN, percent

PROMPT = "Once upon a time"  # the page's default prompt
WAIT_MS = 30_000  # generous: the suite runs on busy machines
PICKED = 2  # the candidate the student clicks: the third most likely


def branches(lm) -> tuple[list[Step], list[Step]]:
    """What the page's Step, Step, Undo and pick of the third candidate make, from the engine: the
    first branch (two greedy tokens) and the second (the same first token, then the pick)."""
    stepper = TokenStepper.from_text(lm, PROMPT)
    first = [stepper.step(), stepper.step()]
    stepper.undo()
    picked = stepper.step(token_id=stepper.next_top(PICKED + 1)[0][PICKED].token_id)
    return first, [first[0], picked]


def chips(lm, steps: list[Step]) -> list[str]:
    """The token chips' labels for the prompt followed by `steps`."""
    marks = {"greedy": "", "user": " picked", "sampled": " sampled"}
    prompt = [str(i) for i in lm.tokenizer.encode(PROMPT, add_special_tokens=False)]
    return prompt + [f"+{s.token_id} · #{s.rank}{marks[s.chosen_by]}" for s in steps]


def branch_on_the_page(tab, lm) -> tuple[list[Step], list[Step]]:
    """Step, Step, Undo, then a pick of the third candidate, as a student does; returns the branches."""
    first, second = branches(lm)
    count = len(token_labels(tab))
    tab.click("#step")
    wait_for_count(tab, count + 1)
    tab.click("#step")
    assert wait_for_count(tab, count + 2) == chips(lm, first)
    tab.click("#undo")
    wait_for_count(tab, count + 1)
    tab.locator("#topk button").nth(PICKED).click()
    assert wait_for_count(tab, count + 2) == chips(lm, second)
    return first, second


def wait_for_labels(tab, expected: list[str], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while token_labels(tab) != expected:
        if time.monotonic() > deadline:
            raise AssertionError(f"expected the chips {expected}, saw {token_labels(tab)}")
        time.sleep(0.05)


def open_paths_by_keyboard(tab) -> None:
    header = tab.get_by_role("button", name="Paths you tried")
    header.focus()
    tab.keyboard.press("Enter")
    tab.wait_for_function(
        "document.querySelector('#paths-tree') && document.querySelector('#paths-tree').innerText.includes('tried:')",
        timeout=WAIT_MS,
    )


def compare_text(tried: list[Step]) -> str:
    """The fork's comparison line as the page writes it (the most likely first)."""
    listed = " · ".join(f"{visible_whitespace(s.token)} {percent(s.prob)} ({HOW_CHOSEN[s.chosen_by]})" for s in tried)
    return f"At position {tried[0].position}, {len(tried)} tokens tried: {listed}"


def active_option(tab) -> str:
    active = tab.locator("#paths-node input").get_attribute("aria-activedescendant")
    return tab.locator(f"#{active}").get_attribute("aria-label") if active else ""


def choose_node_by_keyboard(tab, typed: str, wanted: str) -> None:
    """Tab from the section's header to the node list, type `typed` (the list then offers the nodes that
    match), arrow keys to the option naming `wanted`, Enter; then Tab to Go to this node, Enter: no mouse."""
    for _ in range(6):  # the header, the tree's scrollable region, the list
        tab.keyboard.press("Tab")
        if tab.evaluate("document.activeElement === document.querySelector('#paths-node input')"):
            break
    else:
        raise AssertionError("Tab never reached the node list")
    tab.keyboard.type(typed)  # Tab selected the list's text: typing replaces it
    tab.wait_for_selector("#paths-node [role=option]")
    for _ in range(12):
        if wanted in active_option(tab):
            tab.keyboard.press("Enter")
            break
        before = tab.locator("#paths-node input").get_attribute("aria-activedescendant")
        tab.keyboard.press("ArrowDown")
        tab.wait_for_function(
            "(b) => document.querySelector('#paths-node input').getAttribute('aria-activedescendant') !== b", arg=before
        )
    else:
        raise AssertionError(f"no option names {wanted!r}")
    tab.wait_for_function(
        "(w) => document.querySelector('#paths-node input').value.includes(w)", arg=wanted, timeout=WAIT_MS
    )
    tab.keyboard.press("Tab")
    assert tab.evaluate("document.activeElement.id") == "paths-go"
    tab.keyboard.press("Enter")


def test_both_branches_are_shown_and_the_keyboard_goes_back_to_the_first(page, tiny_lm):
    first, second = branch_on_the_page(page, tiny_lm)
    open_paths_by_keyboard(page)
    tree = page.inner_text("#paths-tree")
    # The fork compares the two tokens tried after the first one: the model's probability of each.
    tried = sorted([first[1], second[1]], key=lambda step: -step.prob)
    assert compare_text(tried) in " ".join(tree.split())
    for step in (first[1], second[1]):
        assert (
            f"{visible_whitespace(step.token)} {percent(step.prob)} · #{step.rank} · {HOW_CHOSEN[step.chosen_by]}"
            in tree
        )
    assert tree.count("← you are here") == 1
    here = page.locator("#paths-tree li.on-path").last.inner_text()
    assert visible_whitespace(second[1].token) in here and "you are here" in here
    page.locator("#paths").screenshot(path=str(SCREENSHOTS / "paths-desktop.png"))

    leaf = first[-1]
    # The first branch's last token shares its position with the pick: type the position, arrow to it.
    choose_node_by_keyboard(
        page, f"position {leaf.position}", f"position {leaf.position}: {visible_whitespace(leaf.token)} ("
    )
    wait_for_labels(page, chips(tiny_lm, first))  # as many chips as before: wait for these ones
    page.wait_for_function("document.querySelector('#status').innerText.includes('Went to node')", timeout=WAIT_MS)
    here = page.locator("#paths-tree li.on-path").last.inner_text()
    assert visible_whitespace(leaf.token) in here and "you are here" in here
    # The path left is kept: both branches are still in the tree, and the page steps on from here.
    assert compare_text(tried) in " ".join(page.inner_text("#paths-tree").split())
    page.click("#step")
    assert wait_for_count(page, len(first) + len(chips(tiny_lm, [])) + 1)[:-1] == chips(tiny_lm, first)


@pytest.mark.parametrize(("size", "theme"), [("phone", "light"), ("desktop", "dark")])
def test_the_tree_fits_a_phone_and_reads_in_the_dark_theme(browser, server_url, tiny_lm, size, theme):
    viewport = {"width": 390, "height": 844} if size == "phone" else {"width": 1280, "height": 900}
    context = browser.new_context(viewport=viewport, color_scheme=theme, is_mobile=size == "phone")
    tab = context.new_page()
    try:
        tab.goto(f"{server_url}?__theme={theme}")
        tab.wait_for_selector("#tokens .token")
        assert tab.evaluate("document.body.classList.contains('dark')") == (theme == "dark")
        branch_on_the_page(tab, tiny_lm)
        open_paths_by_keyboard(tab)
        tab.locator("#paths").scroll_into_view_if_needed()
        assert tab.evaluate("document.scrollingElement.scrollWidth <= window.innerWidth"), "no sideways scroll"
        for selector in (
            "#paths-tree li.on-path",
            "#paths-tree li.paths-node:not(.on-path)",
            "#paths-tree .paths-compare",
            "#paths-tree .paths-meta",
        ):
            ratio = contrast(tab, selector)
            assert ratio >= 4.5, f"{selector} has contrast {ratio:.2f} in the {theme} theme"
        assert tab.locator("#paths-go").bounding_box()["height"] >= 44  # touch-sized
        tab.locator("#paths").screenshot(path=str(SCREENSHOTS / f"paths-{size}-{theme}.png"))
    finally:
        context.close()
