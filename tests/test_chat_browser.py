"""Chat mode in a real browser (Debian's Chromium driven by Playwright): Send, Step, a click on
a top-k candidate, Auto-run to the end of the turn, the template's tokens, and a model
without a chat template."""

from __future__ import annotations

import time

import pytest
from conftest import SCREENSHOTS
from test_chat import MESSAGE, chat_lm, chat_model_dir, im_end, plain_lm  # noqa: F401 (fixtures)
from test_chat_server import chat_url  # noqa: F401 (fixture)

from tokstep.core.chat import control_token_ids, start_turn
from tokstep.web.views import label_key

CHIPS = "#chat-tokens .token .label"


@pytest.fixture
def tab(browser, chat_url):  # noqa: F811 (the fixture imported above)
    context = browser.new_context(viewport={"width": 1200, "height": 1400})
    page = context.new_page()
    page.goto(chat_url)
    page.wait_for_function("(document.querySelector('#chat-status') || {}).innerText?.includes('Send')")
    yield page
    context.close()


def chips(tab) -> list[str]:
    return tab.locator(CHIPS).all_text_contents()


def wait_for_chips(tab, count: int, timeout: float = 15) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(labels := chips(tab)) == count:
            return labels
        time.sleep(0.05)
    raise AssertionError(f"expected {count} token chips, saw {chips(tab)}")


def bot_text(tab) -> str:
    return tab.locator("#chat-bot [data-testid='bot'] .message-content").last.inner_text().strip()


def toast_with(tab, text: str) -> None:
    tab.locator(".toast-body", has_text=text).first.wait_for(timeout=10_000)


def test_send_step_pick_autorun_and_the_template_in_a_real_browser(tab, chat_lm):  # noqa: F811
    # What the page must show, from the engine on the same conversation.
    turn = start_turn(chat_lm, [], MESSAGE)
    template = list(turn.stepper.ids)

    tab.locator("#chat-message textarea").fill(MESSAGE)
    tab.click("#chat-send")
    tab.locator("#chat-bot [data-testid='user']", has_text=MESSAGE).wait_for()
    top, _ = turn.stepper.next_top(5)
    tab.wait_for_function(
        "k => document.querySelector(\"#chat-topk [data-testid='label-output-value']\")?.innerText === k",
        arg=label_key(top[0].token_id, top[0].token),
    )
    assert tab.locator("#chat-message textarea").input_value() == ""

    # Step: exactly one more token, the greedy one, in the chips and in the bot's message.
    first = turn.step()
    tab.click("#chat-step")
    assert wait_for_chips(tab, 1) == [f"+{first.token_id} · #1"]
    tab.wait_for_function(
        "t => document.querySelector(\"#chat-bot [data-testid='bot']\")?.innerText.trim() === t",
        arg=chat_lm.tokenizer.decode([first.token_id]).strip(),
    )

    # Click the second candidate: it is taken instead of the most likely one.
    second, _ = turn.stepper.next_top(5)
    tab.wait_for_function(
        "k => document.querySelector(\"#chat-topk [data-testid='label-output-value']\")?.innerText === k",
        arg=label_key(second[0].token_id, second[0].token),
    )
    picked = turn.step(token_id=second[1].token_id)
    tab.locator("#chat-topk button").nth(1).click()
    assert wait_for_chips(tab, 2)[-1] == f"+{picked.token_id} · #{picked.rank} picked"

    # Auto-run at the default pace: tokens arrive one by one until the model ends its turn.
    rest = []
    while not turn.over:
        rest.append(turn.step().token_id)
    assert rest[-1] == im_end(chat_lm) and len(rest) >= 4, f"the reply after the pick is too short to watch: {rest}"
    tab.click("#chat-autorun")
    seen: list[int] = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        count = len(chips(tab))
        if not seen or count != seen[-1]:
            seen.append(count)
        if count == 2 + len(rest):
            break
        time.sleep(0.03)
    assert seen[-1] == 2 + len(rest), f"the reply did not end: {seen}"
    assert len([c for c in seen if 2 < c < 2 + len(rest)]) >= 3, f"expected intermediate states, saw {seen}"
    assert all(b == a + 1 for a, b in zip(seen, seen[1:], strict=False)), f"one token per update: {seen}"
    assert chips(tab)[2:] == [f"+{i} · #1" for i in rest[:-1]] + [f"+{rest[-1]} · #1 · end of turn"]
    tab.locator("#chat-status", has_text="ended its turn").wait_for()
    assert bot_text(tab) == turn.reply_text().strip()

    # The template's tokens: everything the model read, control tokens marked.
    tab.locator("#chat-show-template input").check()
    labels = wait_for_chips(tab, len(template) + 2 + len(rest))
    controls = control_token_ids(chat_lm.tokenizer)
    assert [c for c in labels if c.endswith("special")] == [f"{i} · special" for i in template if i in controls]
    # Dark chip text, as on the main page (the section brings its own style).
    assert tab.locator(CHIPS).first.evaluate("e => getComputedStyle(e).color") == "rgb(17, 17, 17)"
    texts = tab.locator("#chat-tokens .token .text").all_text_contents()
    assert texts[0] == "<|im_start|>" and texts[-1] == "<|im_end|>"
    tab.screenshot(path=str(SCREENSHOTS / "chat.png"), full_page=True)

    # Step after the end of the turn says so; Undo takes the end-of-turn token back.
    tab.click("#chat-step")
    toast_with(tab, "turn is over")
    tab.click("#chat-undo")
    wait_for_chips(tab, len(template) + 1 + len(rest))


def test_bad_messages_and_a_model_without_a_template_in_the_browser(tab):
    tab.locator("#chat-message textarea").fill("   ")
    tab.click("#chat-send")
    toast_with(tab, "The message is empty")
    assert tab.locator("#chat-bot [data-testid='user']").count() == 0

    tab.locator("#chat-message textarea").fill(MESSAGE)
    tab.click("#chat-send")
    tab.locator("#chat-bot [data-testid='user']", has_text=MESSAGE).wait_for()
    tab.click("#chat-step")
    wait_for_chips(tab, 1)

    tab.click("#model input")
    tab.get_by_role("option", name="plain-model", exact=True).click()
    tab.locator("#chat-status", has_text="This model has no chat template: choose a chat model").wait_for()
    assert tab.locator("#chat-bot [data-testid='user']", has_text=MESSAGE).count() == 1  # the chat stays
    tab.click("#chat-step")
    toast_with(tab, "no chat template")
    tab.locator("#chat-message textarea").fill("Are you there?")
    tab.click("#chat-send")
    toast_with(tab, "no chat template")
    assert tab.locator("#chat-message textarea").input_value() == "Are you there?"  # nothing typed is lost
