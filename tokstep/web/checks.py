"""One way to check a value the page or an API client sends: a check per kind of control.

A check is called with the value as sent (events take their inputs raw, so an API client may send
anything) and gives it back as the type the page uses, or raises `gr.Error` with a sentence that
names the value and says what it may be: "Speed must be a number from 0.5 to 20, got 0." The page
shows it as a pop-up, and gradio_client raises it as an `AppError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import gradio as gr


class Check(Protocol):
    """What every check is: called with the value as sent, it gives the checked value or raises gr.Error."""

    def __call__(self, value: Any) -> Any: ...


def refuse(label: str, what: str, value: Any) -> gr.Error:
    """The error every check raises: "`label` must be `what`, got `value`." """
    return gr.Error(f"{label} must be {what}, got {value!r}.")


@dataclass(frozen=True)
class Whole:
    """A whole number from `low` to `high` (no upper bound when `high` is None). A float that is a
    whole number counts as one: a browser's number box may send 3.0."""

    label: str
    low: int
    high: int | None = None

    def __call__(self, value: Any) -> int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        too_high = self.high is not None and isinstance(value, int) and value > self.high
        if isinstance(value, bool) or not isinstance(value, int) or value < self.low or too_high:
            raise refuse(self.label, self.describe(), value)
        return value

    def describe(self) -> str:
        if self.high is None:
            return f"a whole number of {self.low} or more"
        return f"a whole number from {self.low} to {self.high}"


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
