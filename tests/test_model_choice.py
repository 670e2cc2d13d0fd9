"""The allowlist and the model cache (tokstep.web.model_choice) with real tiny models: parsing
TOKSTEP_MODELS, one load per name even under concurrent requests, refusals that never reach the
loader, and failed loads that are not remembered."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

import tokstep
from tokstep.core.model import LanguageModel, ModelLoadError
from tokstep.core.presets import parse_preset, preset_query
from tokstep.web.model_choice import DEFAULT_CHOICES, ModelCache, ModelNotAllowedError, allowed_models, parse_models

pytest_plugins = ["model_choice_support"]


class CountingLoader:
    """tokstep.load itself, counting the loads per name (the loads are real)."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, name: str) -> LanguageModel:
        with self._lock:
            self.calls.append(name)
        return tokstep.load(name)


def test_parse_models_strips_skips_empty_entries_and_drops_repeats():
    assert parse_models(" gpt2, ,distilgpt2,gpt2 ,, tinystories ") == ["gpt2", "distilgpt2", "tinystories"]
    assert parse_models(None) == list(DEFAULT_CHOICES)  # unset: the default list
    assert parse_models("") == [] and parse_models(" , ") == []  # set but empty: no other model


def test_the_apps_own_model_is_always_allowed_and_first():
    assert allowed_models("tinystories", ["gpt2", "tinystories", " distilgpt2 "]) == (
        "tinystories", "gpt2", "distilgpt2",
    )  # fmt: skip
    assert allowed_models("my-model", []) == ("my-model",)


def test_two_sessions_asking_at_once_share_one_load(tiny_lm, other_model_dir):
    loader = CountingLoader()
    cache = ModelCache([tiny_lm.name, str(other_model_dir)], loaded=[tiny_lm], loader=loader)
    assert cache.get(tiny_lm.name) is tiny_lm and loader.calls == []  # already loaded: no load
    start = threading.Barrier(4)
    got: list[LanguageModel] = []

    def ask() -> None:
        start.wait()
        got.append(cache.get(str(other_model_dir)))

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert loader.calls == [str(other_model_dir)]
    assert len(got) == 4 and all(lm is got[0] for lm in got)
    assert got[0].name == str(other_model_dir) and cache.is_loaded(str(other_model_dir))
    assert cache.get(f"  {other_model_dir} ") is got[0]  # the same name, spaces stripped


@pytest.mark.parametrize("name", ["gpt2", "/etc", "../tokstep/models/tinystories", "", 42, None])
def test_names_off_the_allowlist_are_refused_without_loading(tiny_lm, name):
    loader = CountingLoader()
    cache = ModelCache([tiny_lm.name, "distilgpt2"], loaded=[tiny_lm], loader=loader)
    with pytest.raises(ModelNotAllowedError) as caught:
        cache.get(name)
    assert f"Choose one of: {tiny_lm.name}, distilgpt2." in str(caught.value)
    assert loader.calls == []
    assert isinstance(caught.value, ModelLoadError)  # callers that handle load failures handle this too


def test_a_failed_load_is_not_cached_and_a_later_request_tries_again(tiny_lm, tmp_path, gpt2_tokenizer):
    from model_choice_support import save_broken_model, save_tiny_gpt2

    folder = tmp_path / "later"
    folder.mkdir()
    save_broken_model(folder)
    loader = CountingLoader()
    cache = ModelCache([tiny_lm.name, str(folder)], loaded=[tiny_lm], loader=loader)
    for _ in range(2):
        with pytest.raises(ModelLoadError, match="could not be loaded"):
            cache.get(str(folder))
    assert loader.calls == [str(folder)] * 2 and not cache.is_loaded(str(folder))
    # The operator fixes the folder: the next request loads it.
    (folder / "config.json").unlink()
    save_tiny_gpt2(folder, gpt2_tokenizer, seed=7)
    assert cache.get(str(folder)).name == str(folder)
    assert cache.get(str(folder)) is cache.get(str(folder)) and len(loader.calls) == 3


def test_a_failure_does_not_disturb_the_models_already_loaded(tiny_lm, broken_model_dir):
    cache = ModelCache([tiny_lm.name, str(broken_model_dir)], loaded=[tiny_lm])
    with pytest.raises(ModelLoadError):
        cache.get(str(broken_model_dir))
    lm = cache.get(tiny_lm.name)
    assert lm is tiny_lm
    assert next(tokstep.generate_steps(lm, "Once upon a time", max_new_tokens=1)).token_id >= 0


def test_links_carry_the_model_and_read_it_back(tiny_lm):
    stepper = tokstep.TokenStepper.from_text(tiny_lm, "Once upon a time")
    stepper.step()
    query = preset_query(stepper, None, model="distilgpt2")
    assert query == "?prompt=Once+upon+a+time&steps=1&model=distilgpt2"
    assert preset_query(stepper, None) == "?prompt=Once+upon+a+time&steps=1"  # the default model: no model=
    params = {"prompt": "Once upon a time", "steps": "1", "model": " distilgpt2 "}
    assert parse_preset(params).model == "distilgpt2"
    bad = parse_preset({"model": "x" * 1000})
    assert bad.model is None and "the model in the link is empty or too long" in bad.problems[0]


def test_a_cache_needs_an_allowed_model_and_its_loaded_ones_must_be_allowed(tiny_lm):
    with pytest.raises(ValueError, match="at least one"):
        ModelCache([" ", ""])
    with pytest.raises(ModelNotAllowedError):
        ModelCache(["gpt2"], loaded=[tiny_lm])


def test_the_bundled_model_can_be_offered_by_name(tiny_lm):
    if "tinystories" not in tokstep.bundled_models():
        pytest.skip("no bundled model")
    cache = ModelCache([tiny_lm.name, "tinystories"], loaded=[tiny_lm])
    assert cache.get("tinystories").name == "tinystories"
    assert Path(tiny_lm.name).is_dir()  # the operator listed a local folder: allowed because they did
