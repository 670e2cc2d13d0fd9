"""Chat mode on the real page: `create_demo` offers a chat model in its Model dropdown, and the
chat section (closed at first) steps that model's reply in a real browser."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from conftest import serving, wait_for_count
from test_chat import MESSAGE, chat_lm, chat_model_dir  # noqa: F401 (fixtures)
from test_chat_browser import wait_for_chips
from test_model_choice_browser import pick_model, shown_model

from tokstep.core.chat import start_turn
from tokstep.web.page import create_demo


@pytest.fixture(scope="module")
def page_url(tiny_lm, chat_model_dir) -> Iterator[str]:  # noqa: F811
    with serving(create_demo(tiny_lm, models=[str(chat_model_dir)])) as url:
        yield url


def test_the_page_steps_a_chat_models_reply_after_choosing_it(browser, page_url, tiny_lm, chat_lm):  # noqa: F811
    context = browser.new_context(viewport={"width": 1200, "height": 1400})
    tab = context.new_page()
    try:
        tab.goto(page_url)
        tab.wait_for_selector("#tokens .token")
        # The page opens on the default model, whose tokenizer has no chat template.
        assert shown_model(tab) == tiny_lm.name
        tab.get_by_text("Chat mode: step through a chat model's reply").click()
        tab.locator("#chat-status", has_text="no chat template").wait_for()

        pick_model(tab, chat_lm.name)
        tab.wait_for_function(f"document.querySelector('#model input').value === {chat_lm.name!r}")
        # The switch is done when the session's model has changed, which the chat section shows:
        # its "no chat template" note goes away (a Send before that still goes to the old model).
        tab.wait_for_function("!document.querySelector('#chat-status').innerText.includes('no chat template')")
        tab.locator("#chat-message textarea").fill(MESSAGE)
        tab.click("#chat-send")
        tab.locator("#chat-bot [data-testid='user']", has_text=MESSAGE).wait_for()

        # What Step must append, from the engine on the same conversation and model.
        first = start_turn(chat_lm, [], MESSAGE).step()
        tab.click("#chat-step")
        assert wait_for_chips(tab, 1) == [f"+{first.token_id} · #1"]
        # The main section runs on the chosen model too: its prompt restarted there.
        tab.click("#step")
        wait_for_count(tab, len(chat_lm.tokenizer(tab.locator("#prompt textarea").input_value())["input_ids"]) + 1)
    finally:
        context.close()
