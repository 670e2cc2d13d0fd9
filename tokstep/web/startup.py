"""Choosing the model the app starts with, and falling back to the bundled one offline."""

from __future__ import annotations

import sys

from tokstep.core.loading import bundled_models, load
from tokstep.core.model import LanguageModel, ModelLoadError

FALLBACK_MODEL = "tinystories"


def load_for_app(cli_model: str | None, env_model: str | None, default: str) -> tuple[LanguageModel, str | None]:
    """The app's model and, when it is not the one asked for, a notice saying why.

    A model named on the command line or in TOKSTEP_MODEL must load, or this raises
    ModelLoadError. The default model is used when it is cached or downloadable;
    otherwise (decided within the Hub timeout, a few seconds) the bundled model runs.
    """
    chosen = cli_model or env_model
    if chosen:
        return load(chosen), None
    try:
        return load(default), None
    except ModelLoadError as error:
        available = bundled_models()
        if not available:
            raise
        fallback = FALLBACK_MODEL if FALLBACK_MODEL in available else available[0]
        notice = (
            f"The default model '{default}' is not available here (not cached, and the Hugging Face Hub "
            f"cannot be reached), so this page runs the bundled offline model '{fallback}'."
        )
        print(f"tokstep: {notice}\ntokstep: details: {error}", file=sys.stderr)
        return load(fallback), notice
