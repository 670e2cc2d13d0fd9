"""`PageContext`: what the page's events share besides their inputs (the models on offer, the
folder exports go to, what each open tab is stepping, and each client's runs and tokens). One per
page, made by `create_demo` and bound to every handler."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tokstep.core.model import LanguageModel
from tokstep.web.api import model_or_error
from tokstep.web.client_limits import ClientLimits
from tokstep.web.model_choice import ModelCache
from tokstep.web.tab_runs import TabRuns


@dataclass(frozen=True)
class PageContext:
    models: ModelCache  # the allowlist, and the models loaded so far
    # Whether the page was given a model list: then a run file switches to its own model (or is refused).
    offers_choice: bool
    export_folder: Path  # where "Export run" writes its files
    tab_runs: TabRuns = field(default_factory=TabRuns)  # what each open tab steps: a closed tab's runs stop
    clients: ClientLimits = field(default_factory=ClientLimits)  # each client's fair share (runs, tokens)

    @property
    def default_model(self) -> str:
        return self.models.default

    def lm_for(self, name: object) -> LanguageModel:
        """The loaded model `name` names (gr.Error when it is not offered or fails to load)."""
        return model_or_error(self.models, name)
