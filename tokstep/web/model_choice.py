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

import json
import os
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import huggingface_hub
from huggingface_hub.errors import HFValidationError

from tokstep.core.loading import _is_cached, bundled_model_path, check_hub, load
from tokstep.core.model import LanguageModel, ModelLoadError

# How long the one start-up check of the Hub may take: a page that opens offline must not wait long.
QUICK_HUB_TIMEOUT_S = 3.0
OFFLINE_REASON = "not downloaded, and this server is offline"
NO_HUB_REASON = "not downloaded, and the Hugging Face Hub cannot be reached"
EXCEPTION_NAME = re.compile(r" \((?:\w+\.)*\w*(?:Error|Exception|Timeout)\)")

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
        unavailable: Mapping[str, str] | None = None,
    ) -> None:
        self.allowed: tuple[str, ...] = tuple(dict.fromkeys(name.strip() for name in allowed if name.strip()))
        if not self.allowed:
            raise ValueError("A ModelCache needs at least one allowed model.")
        self._loader = loader
        # Names that cannot load here (see `unavailable_models`), with why: refused without a try.
        self.unavailable: dict[str, str] = dict(unavailable or {})
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

    def loaded(self, name: str) -> LanguageModel | None:
        """The model `name` when a session has loaded it already; None otherwise (nothing loads)."""
        with self._lock:
            return self._models.get(name.strip())

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
        if name in self.unavailable:
            raise ModelLoadError(f"Model '{name}' is unavailable here: {self.unavailable[name]}.")
        with self._lock:
            if name in self._models:
                return self._models[name]
            name_lock = self._name_locks.setdefault(name, threading.Lock())
        # One load per name at a time: whoever waits here finds the model when the first is done.
        with name_lock:
            with self._lock:
                if name in self._models:
                    return self._models[name]
            try:
                lm = self._loader(name)
            except ModelLoadError as error:
                # The page shows the message: a sentence for people, without the exception's class.
                raise ModelLoadError(EXCEPTION_NAME.sub("", str(error))) from error
            with self._lock:
                self._models[name] = lm
            return lm


def local_folder(name: str) -> Path | None:
    """The folder `name` loads from without the network (bundled or a local folder), or None."""
    bundled = bundled_model_path(name)
    if bundled is not None:
        return bundled
    folder = Path(name).expanduser()
    return folder if (folder / "config.json").is_file() else None


def _offline() -> bool:
    # Read at call time, as tokstep.core.loading does: huggingface_hub reads it once, at import.
    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}
    return flag or huggingface_hub.is_offline_mode()


def unavailable_models(names: Iterable[str], loaded: Iterable[str] = ()) -> dict[str, str]:
    """The names among `names` that cannot load here, each with its reason in a few words.

    Cheap enough for start-up: bundled models, local folders and models in the local Hugging Face
    cache always load; for the rest, offline mode decides without the network, and otherwise one
    quick request to the Hub does (a Hub that does not answer makes every such name unavailable).
    """
    done = set(loaded)
    remote = [name for name in names if name not in done and local_folder(name) is None and not _is_cached(name)]
    if not remote:
        return {}
    if _offline():
        return dict.fromkeys(remote, OFFLINE_REASON)
    try:
        check_hub(remote[0], timeout=QUICK_HUB_TIMEOUT_S)
    except ModelLoadError as error:
        if "could not be reached" in str(error):
            return dict.fromkeys(remote, NO_HUB_REASON)
        return {remote[0]: "not a model the Hugging Face Hub knows"}
    return {}


def has_chat_template_files(name: str) -> bool:
    """Whether the model `name` comes with a chat template, read from its files without loading it
    (a bundled or local folder, or the local Hugging Face cache); False when that cannot be told."""
    folder = local_folder(name)
    if folder is not None:
        template, config = folder / "chat_template.jinja", folder / "tokenizer_config.json"
    else:
        try:
            cached = [
                huggingface_hub.try_to_load_from_cache(name, f)
                for f in ("chat_template.jinja", "tokenizer_config.json")
            ]
        except HFValidationError:
            return False
        template, config = (Path(c) if isinstance(c, str) else None for c in cached)
    if template is not None and template.is_file():
        return True
    try:
        return config is not None and bool(json.loads(config.read_text()).get("chat_template"))
    except (OSError, ValueError, AttributeError):
        return False


def describe(name: str, unavailable: Mapping[str, str]) -> str:
    """The dropdown's label for `name`: the name, or the name and why it cannot load here."""
    reason = unavailable.get(name)
    return name if reason is None else f"{name} (unavailable: {reason})"


def chat_models(cache: ModelCache) -> list[str]:
    """The offered models that have a chat template and can load here: those the chat section
    offers to switch to. Loaded models are asked directly; the others are read from their files."""
    from tokstep.core.chat import has_chat_template  # the chat's own test of a template

    names = []
    for name in cache.allowed:
        if name in cache.unavailable:
            continue
        lm = cache.loaded(name)
        if has_chat_template(lm.tokenizer) if lm is not None else has_chat_template_files(name):
            names.append(name)
    return names
