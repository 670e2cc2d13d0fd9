"""Which models a page offers, and the loaded ones, each loaded once and kept.

Gradio-free. The operator decides the allowlist (`TOKSTEP_MODELS`, comma-separated, read by
app.py); visitors, on the page or through the API, may only pick a name from it. A name
outside the list is refused before it reaches `tokstep.load`, so nobody but the operator can
make the server read a local path or download an arbitrary Hub model.

Models load lazily, on first use, and stay in memory for every session after that: the
allowlist is what bounds the memory. Each name has its own lock, so two sessions asking for
the same model at the same moment share one load, while another model can load beside it.
A failed load is not remembered: the next request tries again (the network may be back).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from tokstep.core.loading import load
from tokstep.core.model import LanguageModel, ModelLoadError

# Offered next to the app's own model when the operator does not set TOKSTEP_MODELS.
DEFAULT_CHOICES = ("gpt2", "distilgpt2", "tinystories", "tinystories-chat")


class ModelNotAllowedError(ModelLoadError):
    """A name that is not on the page's allowlist; the message lists the allowed ones."""


def parse_models(value: str | None, default: Iterable[str] = DEFAULT_CHOICES) -> list[str]:
    """The names in a comma-separated list such as TOKSTEP_MODELS (`default` when it is unset).

    Names are stripped, empty entries ignored and repeats dropped. An empty value offers no
    other model, so the page runs only the app's own.
    """
    names = list(default) if value is None else value.split(",")
    return list(dict.fromkeys(name.strip() for name in names if name.strip()))


def allowed_models(app_model: str, others: Iterable[str]) -> tuple[str, ...]:
    """The allowlist: the model the app started with, always first, then `others` (cleaned)."""
    return tuple(dict.fromkeys([app_model.strip(), *parse_models(",".join(others))]))


class ModelCache:
    """The allowlisted models, loaded on first use and kept. Thread-safe.

    `loader` is `tokstep.load` unless a caller passes another way to load a name (a test may
    wrap it to count the loads).
    """

    def __init__(
        self,
        allowed: Iterable[str],
        *,
        loaded: Iterable[LanguageModel] = (),
        loader: Callable[[str], LanguageModel] = load,
    ) -> None:
        self.allowed: tuple[str, ...] = tuple(dict.fromkeys(name.strip() for name in allowed if name.strip()))
        if not self.allowed:
            raise ValueError("A ModelCache needs at least one allowed model.")
        self._loader = loader
        self._models: dict[str, LanguageModel] = {}
        self._lock = threading.Lock()  # guards the two dicts, never held while loading
        self._name_locks: dict[str, threading.Lock] = {}
        for lm in loaded:
            self._models[self.check(lm.name)] = lm

    @property
    def default(self) -> str:
        """The model a session starts on: the first allowed one (the app's own)."""
        return self.allowed[0]

    def is_allowed(self, name: object) -> bool:
        return isinstance(name, str) and name.strip() in self.allowed

    def is_loaded(self, name: str) -> bool:
        with self._lock:
            return name.strip() in self._models

    def refusal(self, name: object) -> str:
        """Why `name` is refused, naming the models that are offered."""
        shown = repr(name[:100]) if isinstance(name, str) else type(name).__name__
        return f"The model {shown} is not offered here. Choose one of: {', '.join(self.allowed)}."

    def check(self, name: object) -> str:
        """`name` stripped when it is on the allowlist; ModelNotAllowedError otherwise."""
        if not self.is_allowed(name):
            raise ModelNotAllowedError(self.refusal(name))
        return name.strip()  # type: ignore[union-attr]  (is_allowed made sure it is a str)

    def get(self, name: str) -> LanguageModel:
        """The loaded model `name`, loading it first if no session has yet.

        Raises ModelNotAllowedError for a name off the allowlist (nothing is loaded) and
        ModelLoadError when loading fails (nothing is cached; a later call tries again).
        """
        name = self.check(name)
        with self._lock:
            if name in self._models:
                return self._models[name]
            name_lock = self._name_locks.setdefault(name, threading.Lock())
        # One load per name at a time: whoever waits here finds the model when the first is done.
        with name_lock:
            with self._lock:
                if name in self._models:
                    return self._models[name]
            lm = self._loader(name)
            with self._lock:
                self._models[name] = lm
            return lm
