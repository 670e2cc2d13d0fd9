"""The page's and the chat's settings as one checked object (tokstep.web.settings): read from an
event's set of inputs, every value checked with a clear message, and passed by API clients in the
one order `page_arguments` / `chat_arguments` know, which is the order the server really takes."""

from __future__ import annotations

import dataclasses
import re

import gradio as gr
import httpx
import pytest
from conftest import SETTINGS
from gradio_client import Client
from gradio_client.exceptions import AppError
from test_server import STATUS, TOPK, generated_ids, greedy

from tokstep.core.sampling import SamplingSettings
from tokstep.web.constants import GREEDY, SAMPLE
from tokstep.web.settings import (
    CHAT_CONTROLS,
    PAGE_AUTORUN_CONTROLS,
    PAGE_CONTROLS,
    AutoRun,
    ChatSettings,
    PageSettings,
    chat_arguments,
    page_arguments,
)

PROMPT = "Once upon a time"


def controls_with_values(controls, **values) -> dict:
    """An event's inputs as Gradio hands a set of them over: real components (with the page's
    elem_ids) as keys, each with its value as sent (the default unless given)."""
    with gr.Blocks():
        return {gr.Textbox(elem_id=c.elem_id): values.get(c.name, c.default) for c in controls}


def test_page_settings_from_inputs_read_every_control_by_its_elem_id():
    values = controls_with_values(PAGE_CONTROLS, mode=SAMPLE, top_k=7, temperature=0.5, sample_top_k=3.0, seed=9.0)
    with gr.Blocks():
        values[gr.State("a stepper")] = None  # other inputs are left alone
    settings = PageSettings.from_inputs(values)
    assert settings == PageSettings(top_k=7, sampling=SamplingSettings(0.5, 3, 1.0, 9), score_prompt=False)
    assert isinstance(settings.sampling.top_k, int) and isinstance(settings.sampling.seed, int)  # 3.0 and 9.0 as sent
    assert PageSettings.from_inputs(controls_with_values(PAGE_CONTROLS)) == PageSettings()  # greedy, top 5
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.top_k = 3  # type: ignore[misc]  (one object per event, never changed)


def test_chat_settings_and_auto_run_read_their_own_controls():
    chat = ChatSettings.from_inputs(controls_with_values(CHAT_CONTROLS, show_template=True, tokens=12, speed=4.0))
    assert (chat.top_k, chat.sampling, chat.show_template) == (5, None, True)
    assert chat.autorun == AutoRun(tokens=12, speed=4.0) and chat.autorun.pause_s == 0.25
    assert AutoRun.from_inputs(controls_with_values(PAGE_AUTORUN_CONTROLS, speed=2)) == AutoRun(20, 2.0)


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("mode", "beam search", "mode must be 'Greedy (most likely)' or 'Sample (seeded)', got 'beam search'."),
        ("top_k", 0, "Top-k size must be a whole number from 1 to 20, got 0."),
        ("top_k", 2.5, "Top-k size must be a whole number from 1 to 20, got 2.5."),
        ("temperature", 0, "temperature must be a number above 0 and at most 10, got 0."),
        ("temperature", "hot", "temperature must be a number above 0 and at most 10, got 'hot'."),
        ("sample_top_k", -1, "sample top-k must be a whole number of 0 or more, got -1."),
        ("top_p", 1.5, "top-p must be a number above 0 and at most 1, got 1.5."),
        ("seed", True, "seed must be a whole number of 0 or more, got True."),
        ("score_prompt", "yes", "colour prompt tokens must be true or false, got 'yes'."),
    ],
)
def test_a_bad_setting_from_an_api_client_gets_a_clear_message_and_changes_nothing(
    server_url, tiny_lm, setting, value, message
):
    client = Client(server_url, verbose=False)
    client.predict(PROMPT, *SETTINGS, api_name="/reset")
    client.predict(PROMPT, *SETTINGS, api_name="/step")
    bad = page_arguments(**{setting: value})
    for event, arguments in [("/step", bad), ("/view", bad), ("/autorun", (3, 20.0, *bad)), ("/link", bad)]:
        with pytest.raises(AppError, match=re.escape(message)) as caught:
            client.predict(PROMPT, *arguments, api_name=event)
        assert "Traceback" not in str(caught.value)
    # Every setting is checked, the greedy mode's unused sampling ones too; the tab is as it was.
    view = client.predict(PROMPT, *SETTINGS, api_name="/step")
    assert generated_ids(view) == greedy(tiny_lm, PROMPT, 2)


def test_settings_by_name_reach_the_page(server_url):
    client = Client(server_url, verbose=False)
    view = client.predict(PROMPT, *page_arguments(top_k=3, mode=SAMPLE, seed=4), api_name="/reset")
    assert len(view[TOPK]["confidences"]) == 3 and "sampling" in view[STATUS]
    assert "greedy" in client.predict(PROMPT, *page_arguments(mode=GREEDY), api_name="/view")[STATUS]
    with pytest.raises(TypeError, match="no such setting: colour"):
        page_arguments(colour=True)


def event_inputs(url: str) -> dict[str, list[str]]:
    """Each named event's inputs as the server takes them from API clients: the elem_id (or the type)
    of each component in order, gr.State left out (gradio_client sends no state)."""
    config = httpx.get(f"{url.rstrip('/')}/config", timeout=30).raise_for_status().json()
    components = {component["id"]: component for component in config["components"]}
    inputs = {}
    for dependency in config["dependencies"]:
        shown = [components[i] for i in dependency["inputs"] if components[i]["type"] != "state"]
        inputs[dependency["api_name"]] = [c["props"].get("elem_id") or c["type"] for c in shown]
    return inputs


def test_the_events_take_the_settings_in_the_order_page_arguments_and_chat_arguments_give(server_url):
    inputs = event_inputs(server_url)
    page = [control.elem_id for control in PAGE_CONTROLS]
    autorun = [control.elem_id for control in PAGE_AUTORUN_CONTROLS]
    chat = [control.elem_id for control in CHAT_CONTROLS]
    for event in ("step", "undo", "view", "link", "export"):
        assert inputs[event] == ["prompt", *page], event
    assert inputs["reset"] == ["prompt", *page]
    assert inputs["autorun"] == ["prompt", *autorun, *page]
    assert inputs["model"] == ["model", "prompt", *page]
    assert inputs["import"] == ["import", "prompt"]  # the file first, as it always was; no settings
    for event in ("chat_step", "chat_autorun", "chat_undo", "chat_clear", "chat_view"):
        assert inputs[event] == chat, event
    assert inputs["chat_send"] == ["chat-message", *chat]
    assert len(page_arguments()) == len(page) and len(chat_arguments()) == len(chat)
