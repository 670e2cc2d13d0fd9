"""One way to check a value the page or an API client sends: a check per kind of control.

A check is called with the value as sent (events take their inputs raw, so an API client may send
anything) and gives it back as the type the page uses, or raises `gr.Error` with a sentence that
names the value and says what it may be: "Speed must be a number from 0.5 to 20, got 0." The page
shows it as a pop-up, and gradio_client raises it as an `AppError`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import gradio as gr

LOG = logging.getLogger("tokstep")


def titled(title: str, message: str) -> str:
    """`message` led by `title`. Gradio 6.31's pop-up titles itself with its kind ("Warning", "Error")
    and never shows the `title=` the code gives it (its toast reads only the level), so the title
    the code sets goes first in the text, where the reader sees it."""
    return message if message.startswith(f"{title}:") else f"{title}: {message}"


def warn(message: str, title: str) -> None:
    """A warning pop-up whose text starts with `title` (see `titled`), and one line in the console."""
    LOG.warning("tokstep: %s: %s", title, message)
    gr.Warning(titled(title, message), title=title)


def user_error(message: str, title: str = "Error") -> gr.Error:
    """The gr.Error for a user's mistake (an empty prompt, a bad setting, Send without a template):
    the pop-up titled `title`, and one line in the console. Gradio prints a gr.Error's traceback
    unless `print_exception=False` (gradio/queueing.py, utils.py); a mistake is not a fault, and
    real faults (any other exception) still log theirs."""
    LOG.warning("tokstep: %s: %s", title, message)
    return gr.Error(titled(title, message), title=title, print_exception=False)


class Check(Protocol):
    """What every check is: called with the value as sent, it gives the checked value or raises gr.Error."""

    def __call__(self, value: Any) -> Any: ...


def refuse(label: str, what: str, value: Any) -> gr.Error:
    """The error every check raises: "`label` must be `what`, got `value`." """
    return user_error(f"{label} must be {what}, got {value!r}.", title="Bad setting")


@dataclass(frozen=True)
class Whole:
    """A whole number from `low` to `high` (no upper bound when `high` is None). A float that is a
    whole number counts as one: a browser's number box may send 3.0. `why`: what sets the range,
    said in the message (the operator's ceiling, say)."""

    label: str
    low: int
    high: int | None = None
    why: str = ""

    def __call__(self, value: Any) -> int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        too_high = self.high is not None and isinstance(value, int) and value > self.high
        if isinstance(value, bool) or not isinstance(value, int) or value < self.low or too_high:
            raise refuse(self.label, self.describe(), value)
        return value

    def describe(self) -> str:
        why = f" ({self.why})" if self.why else ""
        if self.high is None:
            return f"a whole number of {self.low} or more{why}"
        return f"a whole number from {self.low} to {self.high}{why}"


@dataclass(frozen=True)
class Number:
    """A number from `low` to `high`; with `above`, above `low` (not `low` itself)."""

    label: str
    low: float
    high: float
    above: bool = False

    def __call__(self, value: Any) -> float:
        number = isinstance(value, int | float) and not isinstance(value, bool)
        # Comparisons with NaN are all false, so NaN fails these too.
        if not number or not (self.low < value if self.above else self.low <= value) or not value <= self.high:
            raise refuse(self.label, self.describe(), value)
        return float(value)

    def describe(self) -> str:
        if self.above:
            return f"a number above {self.low:g} and at most {self.high:g}"
        return f"a number from {self.low:g} to {self.high:g}"


@dataclass(frozen=True)
class Choice:
    """One of `options` (the labels of a radio)."""

    label: str
    options: Sequence[str]

    def __call__(self, value: Any) -> str:
        if not isinstance(value, str) or value not in self.options:
            raise refuse(self.label, " or ".join(repr(option) for option in self.options), value)
        return value


@dataclass(frozen=True)
class Flag:
    """True or false (a checkbox); nothing else counts as either."""

    label: str

    def __call__(self, value: Any) -> bool:
        if not isinstance(value, bool):
            raise refuse(self.label, "true or false", value)
        return value
