"""The page's components, section by section, and `PageUI`: all of them in one object.

Each function builds one section inside the current `gr.Blocks`, top to bottom as the page shows
them, and returns its components; `PageUI` holds every section and is what the handlers
(tokstep.web.page_handlers, tokstep.web.share_handlers) are given. No events are wired here.

Creation order is part of the API: Gradio gives API clients an event's set of inputs in the order
the components were created. So the session's state comes first (the raw queue protocol sends it
first, as bench.classroom does), and the settings controls are created in the order of
tokstep.web.settings.PAGE_CONTROLS.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import gradio as gr
from gradio.components import Component

from tokstep.web.constants import (
    DEFAULT_AUTORUN_TOKENS,
    DEFAULT_SPEED,
    DEFAULT_TOP_K,
    GREEDY,
    MAX_AUTORUN_TOKENS,
    MAX_SPEED,
    MAX_TOP_K,
    MIN_SPEED,
    SAMPLE,
    SAMPLE_TOP_K_MAX,
    SPEED_STEP,
    STATE_TTL_S,
    TEMPERATURE_RANGE,
    TOP_P_MIN,
)
from tokstep.web.model_choice import describe
from tokstep.web.sampling_help import SamplingHelpBoxes
from tokstep.web.views import LEGEND, TOKEN_TABLE_HEADERS, TOPK_TABLE_HEADERS, PageView

TITLE = (
    "# tokstep: watch a language model write, one token at a time\n"
    "Type a prompt, see its tokens and the model's most likely next "
    "tokens, then press **Step** (or Ctrl+Enter) to append the most likely one, click a "
    "candidate to take it instead, or **Auto-run** to keep going."
)


@dataclass(frozen=True)
class Session:
    """What the server keeps for each tab, and what the browser keeps of it."""

    state: gr.State  # the tab's TokenStepper (None until the first event, or after it expired)
    # The tab's model name, read by every event. No time to live: it is a short string, and a page
    # that lost it would quietly fall back to the default model.
    model_choice: gr.State
    # The tab's run as the browser keeps it (localStorage), for a reload: tokstep.web.browser_run.
    stored: gr.BrowserState


@dataclass(frozen=True)
class Controls:
    """The model, the prompt, the buttons and Auto-run's row."""

    model: gr.Dropdown
    prompt: gr.Textbox
    step: gr.Button
    autorun: gr.Button
    stop: gr.Button
    undo: gr.Button
    reset: gr.Button
    autorun_tokens: gr.Slider
    speed: gr.Slider
    continue_past: gr.Button  # one Step past an end-of-text token, which Step stops at


@dataclass(frozen=True)
class TokenView:
    """The tokens, the top-k candidates, the status line and the text so far."""

    tokens: gr.HighlightedText
    topk: gr.Label
    status: gr.Markdown
    text: gr.Textbox
    legend: gr.HTML  # with the tab's model's ids: the model event updates it


@dataclass(frozen=True)
class ShareRow:
    """Copy link, export and load a run."""

    copy_link: gr.Button
    export: gr.Button
    load: gr.UploadButton
    link: gr.Textbox
    export_file: gr.File
    export_why: gr.Button  # the run file with each step's layer by layer and where it looked


@dataclass(frozen=True)
class SettingsControls:
    """The "Choosing" accordion: greedy or sampling, the top-k size, colouring the prompt."""

    mode: gr.Radio
    top_k_size: gr.Slider
    temperature: gr.Slider
    sample_top_k: gr.Slider
    top_p: gr.Slider
    seed: gr.Number
    score_prompt: gr.Checkbox

    @property
    def all(self) -> list[Component]:
        """Every settings control, in the order of tokstep.web.settings.PAGE_CONTROLS (the fields' order)."""
        return [getattr(self, control.name) for control in fields(self)]

    @property
    def sampling(self) -> list[Component]:
        """The controls a link or a run file sets: mode, temperature, sample top-k, top-p, seed."""
        return [self.mode, self.temperature, self.sample_top_k, self.top_p, self.seed]


@dataclass(frozen=True)
class Tables:
    """The notebook's two tables."""

    tokens: gr.Dataframe
    topk: gr.Dataframe


@dataclass(frozen=True)
class PageUI:
    """Every component an event of the page reads or writes, by section."""

    session: Session
    controls: Controls
    view: TokenView
    share: ShareRow
    settings: SettingsControls
    tables: Tables
    sampling_help: SamplingHelpBoxes  # beside the settings' controls

    @property
    def view_outputs(self) -> list[Component]:
        """The outputs a `PageView` fills, in the order of tokstep.web.views.VIEW_OUTPUTS."""
        view, tables = self.view, self.tables
        return [
            self.session.state, view.tokens, view.topk, view.status, tables.tokens, tables.topk, view.text,
            *self.sampling_help.components,
        ]  # fmt: skip

    def show(self, shown: PageView) -> dict[Component, Any]:
        """An event's update for `shown`: every view output's new value."""
        return dict(zip(self.view_outputs, shown, strict=True))


def session_state(default_model: str, storage_key: str, secret: str | None = None) -> Session:
    """The tab's state on the server, and in the browser under `storage_key`, encrypted with `secret`
    (None: Gradio draws one at each start). No event but the page's own reads or writes the stored run."""
    return Session(
        state=gr.State(None, time_to_live=STATE_TTL_S),
        model_choice=gr.State(default_model),
        stored=gr.BrowserState(None, storage_key=storage_key, secret=secret),
    )


def header(
    notice: str | None, models: Sequence[str], default_model: str, unavailable: Mapping[str, str] | None = None
) -> gr.Dropdown:
    """The title, a notice when there is one (e.g. why a fallback model runs), and the model dropdown:
    a model that cannot load here is listed with why, in a few words (choosing it says so again)."""
    gr.Markdown(TITLE)
    if notice:
        gr.Markdown(f"⚠️ {notice}", elem_id="notice")
    # Created here, rendered beside the prompt by `controls` (creation order is the API's order).
    return gr.Dropdown(
        choices=[(describe(name, unavailable or {}), name) for name in models], value=default_model,
        label="Model", elem_id="model", render=False, scale=1, min_width=200,
        interactive=len(models) > 1, allow_custom_value=False,
        info="Another model loads when first chosen, then the page starts over from the prompt.",
    )  # fmt: skip


def controls(model: gr.Dropdown, prompt: str) -> Controls:
    """The model and the prompt side by side, the buttons in one compact row (sticky on a phone, see
    tokstep.web.assets.CSS), and how many tokens Auto-run writes at what speed (rendered lower down
    by `autorun_row`: created here, as the API's order of inputs has it)."""
    with gr.Row(equal_height=True):
        model.render()
        prompt_box = gr.Textbox(value=prompt, label="Prompt", lines=2, max_lines=8, elem_id="prompt", scale=3)
    with gr.Row(elem_id="buttons"):
        step = gr.Button("Step", variant="primary", elem_id="step", min_width=0)
        autorun = gr.Button("Auto-run", variant="secondary", elem_id="autorun", min_width=0)
        stop = gr.Button("Stop", variant="stop", elem_id="stop", min_width=0)
        undo = gr.Button("Undo", elem_id="undo", min_width=0)
        reset = gr.Button("Reset", elem_id="reset", min_width=0)
        continue_past = gr.Button("Continue past the end", elem_id="continue", min_width=0)
    autorun_tokens = gr.Slider(
        1, MAX_AUTORUN_TOKENS, value=DEFAULT_AUTORUN_TOKENS, step=1,
        label="Tokens to auto-run", elem_id="autorun-tokens", render=False,
    )  # fmt: skip
    speed = gr.Slider(
        MIN_SPEED, MAX_SPEED, value=DEFAULT_SPEED, step=SPEED_STEP, label="Speed (tokens per second)",
        elem_id="speed", render=False,
    )  # fmt: skip
    return Controls(model, prompt_box, step, autorun, stop, undo, reset, autorun_tokens, speed, continue_past)


def token_view(controls: Controls, legend: str = LEGEND) -> tuple[TokenView, gr.Radio]:
    """What a student watches, on one screen: the tokens with their ids and the status line beside
    the top-k and how Step chooses (the mode radio, created here for the settings, see
    `settings_accordion`); then the legend of the colours, Auto-run's count and speed, the text so far."""
    with gr.Row(elem_id="watch"):
        with gr.Column(scale=3, min_width=300):
            tokens = gr.HighlightedText(
                label="Tokens, each with its id", elem_id="tokens", show_legend=False,
                combine_adjacent=False, show_inline_category=True,
            )  # fmt: skip
            status = gr.Markdown(elem_id="status")
        with gr.Column(scale=2, min_width=260):
            topk = gr.Label(label="Next token: the model's top candidates (click one to take it)", elem_id="topk")
            mode = gr.Radio([GREEDY, SAMPLE], value=GREEDY, label="How Step and Auto-run choose", elem_id="mode")
    legend_box = gr.HTML(legend, elem_id="legend")
    with gr.Row():  # Auto-run's count and speed, created with the buttons
        controls.autorun_tokens.render()
        controls.speed.render()
    text = gr.Textbox(label="Text so far", interactive=False, lines=2, elem_id="text")
    return TokenView(tokens, topk, status, text, legend_box), mode


def share_row() -> ShareRow:
    """Copy link, Export run and Load a run, with the link and the file they give: one collapsed
    accordion, so the first screen is the lesson's."""
    with gr.Accordion("Save and share: link, run file", open=False, elem_id="save-share"):
        with gr.Row(elem_id="share"):
            copy_link = gr.Button("Copy link", elem_id="copy-link")
            export = gr.Button("Export run (JSON)", elem_id="export")
            # One more pass per token: what each layer would have predicted, and where the model looked.
            export_why = gr.Button("Export + Why (JSON)", elem_id="export-why")
            load = gr.UploadButton(
                "Load a run", elem_id="import", file_types=[".json"], type="filepath", file_count="single"
            )
        with gr.Row():
            link = gr.Textbox(
                label="Link to this state (prompt, tokens so far, settings)", interactive=False,
                buttons=["copy"], elem_id="link",
            )  # fmt: skip
            export_file = gr.File(label="Run file", interactive=False, elem_id="export-file")
    return ShareRow(copy_link, export, load, link, export_file, export_why)


def settings_accordion(mode: gr.Radio, help_boxes: SamplingHelpBoxes) -> SettingsControls:
    """How Step and Auto-run choose: the mode (shown beside the top-k, see `token_view`), the sampling
    settings, each above its help box (tokstep.web.sampling_help), the top-k size, colouring the prompt."""
    with gr.Accordion("Choosing: sampling settings, top-k size", open=False, elem_id="choosing"):
        with gr.Row():
            top_k_size = gr.Slider(
                1, MAX_TOP_K, value=DEFAULT_TOP_K, step=1, label="Top-k size (candidates shown)",
                elem_id="topk-size",
            )  # fmt: skip
        with gr.Row(elem_id="sampling-settings"):  # a column per setting; they stack on a phone
            with gr.Column(min_width=220):
                temperature = gr.Slider(
                    *TEMPERATURE_RANGE, value=1.0, step=0.05, label="Temperature", elem_id="temperature"
                )
                help_boxes.temperature.render()
            with gr.Column(min_width=220):
                sample_top_k = gr.Slider(
                    0, SAMPLE_TOP_K_MAX, value=0, step=1, label="Sample from top k (0 = all)", elem_id="top-k"
                )
                help_boxes.top_k.render()
            with gr.Column(min_width=220):
                top_p = gr.Slider(TOP_P_MIN, 1.0, value=1.0, step=0.05, label="Top-p (1 = all)", elem_id="top-p")
                help_boxes.top_p.render()
            with gr.Column(min_width=220):
                seed = gr.Number(value=0, precision=0, minimum=0, label="Seed", elem_id="seed")
                help_boxes.seed.render()
        score_prompt = gr.Checkbox(
            label="Colour prompt tokens by how likely the model found them", elem_id="score-prompt"
        )
    return SettingsControls(mode, top_k_size, temperature, sample_top_k, top_p, seed, score_prompt)


def notebook_tables() -> Tables:
    """The seed notebook's tables: the tokens with their ids, and the top-k with id, token and p."""
    with gr.Accordion("The notebook's tables", open=False, elem_id="tables"):
        tokens = gr.Dataframe(headers=TOKEN_TABLE_HEADERS, label="Tokens", interactive=False, elem_id="token-table")
        topk = gr.Dataframe(
            headers=TOPK_TABLE_HEADERS, label="Top next tokens", interactive=False, elem_id="topk-table"
        )
    return Tables(tokens, topk)
