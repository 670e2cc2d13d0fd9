"""The page's and the chat's settings, each one checked object built from an event's inputs.

Events take their inputs as a set (`inputs={...}`): Gradio then hands the handler one dict keyed by
component. `PageSettings.from_inputs(values)` finds the settings' controls in it by elem_id and
checks every one with tokstep.web.checks, so a bad value from an API client is a gr.Error that
names it. `ChatSettings` does the same for the chat section, and `AutoRun` for the page's Auto-run
controls (the chat's are among its settings).

How API clients pass settings: Gradio gives an API client a set's components in the order they
were created (it sorts them by id), so an undocumented event such as `/step` takes the settings in
the order the page lays them out, after its other inputs. The tables below list the controls in
that order, and `page_arguments` / `chat_arguments` are the one place that turns settings by name
into those positional arguments:

    client.predict("Once upon a time", *page_arguments(mode=SAMPLE, seed=3), api_name="/step")
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tokstep.core.sampling import MAX_TEMPERATURE, SamplingSettings
from tokstep.web.checks import Check, Choice, Flag, Number, Whole
from tokstep.web.constants import (
    DEFAULT_AUTORUN_TOKENS,
    DEFAULT_REPLY_TOKENS,
    DEFAULT_SPEED,
    DEFAULT_TOP_K,
    GREEDY,
    MAX_AUTORUN_TOKENS,
    MAX_REPLY_TOKENS,
    MAX_SPEED,
    MAX_TOP_K,
    MIN_SPEED,
    SAMPLE,
)


@dataclass(frozen=True)
class Control:
    """One settings control: the name scripts give it, its component's elem_id, its check and default."""

    name: str
    elem_id: str
    check: Check
    default: Any


MODE = Choice("mode", (GREEDY, SAMPLE))
TOP_K_SIZE = Whole("Top-k size", 1, MAX_TOP_K)
# The sampler's own limits (tokstep.core.sampling), not the sliders': API clients could always send them.
TEMPERATURE = Number("temperature", 0, MAX_TEMPERATURE, above=True)
SEED = Whole("seed", 0)
SPEED = Number("Speed", MIN_SPEED, MAX_SPEED)

# In the order the page creates them (tokstep.web.page_layout.settings_accordion).
PAGE_CONTROLS = (
    Control("mode", "mode", MODE, GREEDY),
    Control("top_k", "topk-size", TOP_K_SIZE, DEFAULT_TOP_K),
    Control("temperature", "temperature", TEMPERATURE, 1.0),
    Control("sample_top_k", "top-k", Whole("sample top-k", 0), 0),
    Control("top_p", "top-p", Number("top-p", 0, 1, above=True), 1.0),
    Control("seed", "seed", SEED, 0),
    Control("score_prompt", "score-prompt", Flag("colour prompt tokens"), False),
)
# The page's Auto-run row, created before the settings (tokstep.web.page_layout.controls).
PAGE_AUTORUN_CONTROLS = (
    Control("tokens", "autorun-tokens", Whole("Tokens to auto-run", 1, MAX_AUTORUN_TOKENS), DEFAULT_AUTORUN_TOKENS),
    Control("speed", "speed", SPEED, DEFAULT_SPEED),
)
# In the order the chat section creates them (tokstep.web.chat_layout): its Auto-run controls last.
CHAT_CONTROLS = (
    Control("show_template", "chat-show-template", Flag("Show the template's tokens"), False),
    Control("mode", "chat-mode", MODE, GREEDY),
    Control("temperature", "chat-temperature", TEMPERATURE, 1.0),
    Control("seed", "chat-seed", SEED, 0),
    Control("top_k", "chat-topk-size", TOP_K_SIZE, DEFAULT_TOP_K),
    Control(
        "tokens", "chat-autorun-tokens", Whole("Most tokens per Auto-run", 1, MAX_REPLY_TOKENS), DEFAULT_REPLY_TOKENS
    ),
    Control("speed", "chat-speed", SPEED, DEFAULT_SPEED),
)


def read_controls(values: Mapping[Any, Any], controls: Sequence[Control]) -> dict[str, Any]:
    """Each control's checked value, by name, from an event's inputs (a dict keyed by component).
    The first bad value raises its gr.Error."""
    by_elem_id = {getattr(component, "elem_id", None): value for component, value in values.items()}
    return {control.name: control.check(by_elem_id[control.elem_id]) for control in controls}


def arguments(controls: Sequence[Control], values: Mapping[str, Any]) -> tuple[Any, ...]:
    """The controls' values in their order: each one's from `values` (by name) or its default."""
    unknown = set(values) - {control.name for control in controls}
    if unknown:
        raise TypeError(f"no such setting: {', '.join(sorted(unknown))} (there are {[c.name for c in controls]})")
    return tuple(values.get(control.name, control.default) for control in controls)


def page_arguments(**values: Any) -> tuple[Any, ...]:
    """The page's settings as its undocumented events take them, after their other inputs: mode, top-k
    size, temperature, sample top-k, top-p, seed, colour prompt (the defaults where not given)."""
    return arguments(PAGE_CONTROLS, values)


def chat_arguments(**values: Any) -> tuple[Any, ...]:
    """The chat's settings as its events take them, after the model (and Send's message): show the
    template, mode, temperature, seed, top-k size, Auto-run's tokens and speed (defaults where not given)."""
    return arguments(CHAT_CONTROLS, values)


def sampling_from(read: Mapping[str, Any], top_k: int = 0, top_p: float = 1.0) -> SamplingSettings | None:
    """Seeded sampling when the mode says so (None: greedy), from checked values."""
    if read["mode"] != SAMPLE:
        return None
    return SamplingSettings(temperature=read["temperature"], top_k=top_k, top_p=top_p, seed=read["seed"])


@dataclass(frozen=True)
class AutoRun:
    """How far and how fast an Auto-run goes."""

    tokens: int = DEFAULT_AUTORUN_TOKENS
    speed: float = DEFAULT_SPEED  # tokens per second

    @property
    def pause_s(self) -> float:
        """Seconds from one token's step to the next one's."""
        return 1.0 / self.speed

    @classmethod
    def from_inputs(cls, values: Mapping[Any, Any], controls: Sequence[Control] = PAGE_AUTORUN_CONTROLS) -> AutoRun:
        read = read_controls(values, controls)
        return cls(tokens=read["tokens"], speed=read["speed"])


@dataclass(frozen=True)
class PageSettings:
    """What the user set on the page besides the prompt and Auto-run."""

    top_k: int = DEFAULT_TOP_K  # how many candidates the label and table show
    sampling: SamplingSettings | None = None  # None: greedy stepping
    score_prompt: bool = False  # colour prompt tokens by how likely the model found them
    # What the sampling controls say, also in greedy mode (`sampling` None): the help beside them
    # explains them either way (tokstep.web.sampling_help). Not part of what the settings are.
    sampling_controls: SamplingSettings = field(default=SamplingSettings(), compare=False)

    @classmethod
    def from_inputs(cls, values: Mapping[Any, Any]) -> PageSettings:
        """The page's settings from an event's inputs, every one checked (gr.Error names a bad one)."""
        read = read_controls(values, PAGE_CONTROLS)
        return cls(
            top_k=read["top_k"],
            sampling=sampling_from(read, top_k=read["sample_top_k"], top_p=read["top_p"]),
            score_prompt=read["score_prompt"],
            sampling_controls=SamplingSettings(
                temperature=read["temperature"], top_k=read["sample_top_k"], top_p=read["top_p"], seed=read["seed"]
            ),
        )


@dataclass(frozen=True)
class ChatSettings:
    """What the user set in the chat section."""

    top_k: int = DEFAULT_TOP_K
    sampling: SamplingSettings | None = None  # the chat samples from the whole distribution: no top-k, top-p
    show_template: bool = False
    autorun: AutoRun = field(default_factory=lambda: AutoRun(tokens=DEFAULT_REPLY_TOKENS))

    @classmethod
    def from_inputs(cls, values: Mapping[Any, Any]) -> ChatSettings:
        """The chat's settings from an event's inputs, every one checked (gr.Error names a bad one)."""
        read = read_controls(values, CHAT_CONTROLS)
        return cls(
            top_k=read["top_k"],
            sampling=sampling_from(read),
            show_template=read["show_template"],
            autorun=AutoRun(tokens=read["tokens"], speed=read["speed"]),
        )
