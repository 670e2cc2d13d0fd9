"""Optional packages that are not installed are looked for once, not on every event Gradio serves."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from conftest import SETTINGS
from gradio_client import Client

from tokstep.web.absent_modules import LOOKED_UP_WHILE_SERVING, mark_absent
from tokstep.web.deployment import Tweaks, apply_process_tweaks
from tokstep.web.views import VIEW_OUTPUTS


class RecordingFinder(importlib.abc.MetaPathFinder):
    """First on sys.meta_path: notes every module name the import system searches for, finds nothing."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def find_spec(self, name, path=None, target=None):  # noqa: ANN001 (the finder protocol's signature)
        self.names.append(name)
        return None


@contextmanager
def searched_names() -> Iterator[list[str]]:
    """The names imports search sys.path for inside the block (a module already imported, or
    marked absent, is answered from sys.modules without a search)."""
    finder = RecordingFinder()
    sys.meta_path.insert(0, finder)
    try:
        yield finder.names
    finally:
        sys.meta_path.remove(finder)


@pytest.fixture
def missing_name() -> Iterator[str]:
    """The name of a package that is not installed; its mark is removed afterwards."""
    name = f"tokstep_test_missing_{uuid.uuid4().hex}"
    yield name
    sys.modules.pop(name, None)


def test_a_missing_package_is_marked_and_then_fails_without_a_search(missing_name):
    with searched_names() as names, pytest.raises(ImportError):
        importlib.import_module(missing_name)
    assert missing_name in names  # unmarked, each failed import searches sys.path again

    assert mark_absent([missing_name]) == [missing_name]
    with searched_names() as names:
        with pytest.raises(ImportError):
            importlib.import_module(missing_name)
        assert importlib.util.find_spec(missing_name) is None
    assert missing_name not in names
    assert mark_absent([missing_name]) == []  # marked once


def test_an_installed_package_is_never_marked(tmp_path, monkeypatch):
    name = f"tokstep_test_installed_{uuid.uuid4().hex}"
    (tmp_path / name).mkdir()
    (tmp_path / name / "__init__.py").write_text("ANSWER = 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert mark_absent([name]) == []
        assert importlib.import_module(name).ANSWER == 42
    finally:
        sys.modules.pop(name, None)


def test_only_top_level_packages_are_marked():
    with pytest.raises(ValueError, match="top-level"):
        mark_absent(["matplotlib.pyplot"])


def test_serving_events_and_tables_searches_for_no_missing_package(server_url):
    """With the app's process tweaks applied (app.py applies them at start-up), the page's server
    answers a page event, which sends two tables, and a /generate stream, without Gradio searching
    for matplotlib or polars where they are missing."""
    # Not installed, whatever sys.modules says: PathFinder searches sys.path itself.
    missing = [name for name in LOOKED_UP_WHILE_SERVING if importlib.machinery.PathFinder.find_spec(name) is None]
    if not missing:
        pytest.skip(f"{', '.join(LOOKED_UP_WHILE_SERVING)} are installed here: nothing to mark")
    apply_process_tweaks(Tweaks(malloc_arenas=0))  # the marks only: arenas are tests/test_allocator.py's
    client = Client(server_url, verbose=False)
    with searched_names() as names:
        view = client.predict("Once upon a time", *SETTINGS, api_name="/step")
        updates = list(client.submit("Once upon a time", 3, api_name="/generate"))
    text = view[VIEW_OUTPUTS.index("text") - 1]  # the text so far (an API client gets no gr.State)
    assert text.startswith("Once upon a time") and len(updates) == 3  # the events really ran
    assert not set(missing) & set(names)


def test_each_process_tweak_has_an_off_switch_in_the_environment():
    assert Tweaks.from_env({}) == Tweaks()
    assert Tweaks.from_env(
        {"TOKSTEP_PACK_WEIGHTS": "0", "TOKSTEP_MALLOC_ARENAS": "0", "TOKSTEP_MARK_ABSENT": "off"}
    ) == (Tweaks(pack_weights=False, malloc_arenas=0, mark_absent_modules=False))
    assert Tweaks.from_env({"TOKSTEP_MALLOC_ARENAS": " 4 "}).malloc_arenas == 4
    with pytest.raises(ValueError, match="TOKSTEP_MALLOC_ARENAS must be a whole number"):
        Tweaks.from_env({"TOKSTEP_MALLOC_ARENAS": "lots"})
