"""Model choice through a real launched server (gradio_client): switching a session's model,
a model that fails to load, /generate's `model` argument, `model=` in links, and run files made
with another model."""

from __future__ import annotations

import json
from urllib.parse import parse_qsl

import pytest
from conftest import SETTINGS
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from test_server import STATUS, TEXT, generated_ids, greedy, prompt_ids

import tokstep

pytest_plugins = ["model_choice_support"]

PROMPT = "Once upon a time"


@pytest.fixture
def client(choice_server_url) -> Client:
    """A new client is a new session, on the default model."""
    return Client(choice_server_url, verbose=False)


def choose(client: Client, name: str, prompt: str = PROMPT) -> tuple:
    """Pick `name` in the session's Model dropdown; the last update (the first may say "Loading")."""
    job = client.submit(name, prompt, *SETTINGS, api_name="/model")
    return job.result()  # an AppError when the event raised gr.Error


def test_the_two_tiny_models_write_different_tokens(tiny_lm, other_lm):
    # Otherwise the tests below could not tell which model a session runs.
    assert greedy(tiny_lm, PROMPT, 4) != greedy(other_lm, PROMPT, 4)


def test_choosing_a_model_starts_over_on_it_and_every_event_uses_it(client, tiny_lm, other_lm, other_model_dir):
    client.predict(PROMPT, *SETTINGS, api_name="/reset")
    client.predict(PROMPT, *SETTINGS, api_name="/step")
    view = choose(client, str(other_model_dir))
    assert f"Switched to **{other_model_dir}**" in view[STATUS]
    assert generated_ids(view) == [] and prompt_ids(view) == tokstep.tokenize(other_lm.tokenizer, PROMPT)
    expected = greedy(other_lm, PROMPT, 3)
    for count in range(1, 3):
        view = client.predict(PROMPT, *SETTINGS, api_name="/step")
        assert generated_ids(view) == expected[:count]
    assert generated_ids(client.predict(PROMPT, *SETTINGS, api_name="/undo")) == expected[:1]
    # Reset and Auto-run start from the prompt box on the session's model too.
    assert generated_ids(client.predict(PROMPT, *SETTINGS, api_name="/reset")) == []
    updates = list(client.submit(PROMPT, 3, 20.0, *SETTINGS, api_name="/autorun"))
    assert generated_ids(updates[-1]) == expected
    # The link names the model; an export records it.
    query = dict(parse_qsl(client.predict(PROMPT, *SETTINGS, api_name="/link").lstrip("?")))
    assert query == {"prompt": PROMPT, "steps": "3", "model": str(other_model_dir)}
    with open(client.predict(PROMPT, *SETTINGS, api_name="/export"), encoding="utf-8") as file:
        assert json.load(file)["model"]["name"] == str(other_model_dir)
    # Back to the default model: the link no longer names one.
    choose(client, tiny_lm.name)
    client.predict(PROMPT, *SETTINGS, api_name="/step")
    assert client.predict(PROMPT, *SETTINGS, api_name="/link") == "?prompt=Once+upon+a+time&steps=1"


def test_sessions_keep_their_own_models(choice_server_url, tiny_lm, other_lm, other_model_dir):
    alice, bob = Client(choice_server_url, verbose=False), Client(choice_server_url, verbose=False)
    choose(alice, str(other_model_dir))
    bob.predict(PROMPT, *SETTINGS, api_name="/reset")
    assert generated_ids(alice.predict(PROMPT, *SETTINGS, api_name="/step")) == greedy(other_lm, PROMPT, 1)
    assert generated_ids(bob.predict(PROMPT, *SETTINGS, api_name="/step")) == greedy(tiny_lm, PROMPT, 1)


def test_a_model_that_fails_to_load_leaves_the_session_as_it_was(client, tiny_lm, broken_model_dir):
    client.predict(PROMPT, *SETTINGS, api_name="/reset")
    before = client.predict(PROMPT, *SETTINGS, api_name="/step")
    view = choose(client, str(broken_model_dir))
    assert f"Could not switch to '{broken_model_dir}'" in view[STATUS]
    assert f"The page stays on '{tiny_lm.name}'" in view[STATUS]
    assert generated_ids(view) == generated_ids(before)  # nothing lost
    assert view[-1]["value"] == tiny_lm.name  # the dropdown goes back
    after = client.predict(PROMPT, *SETTINGS, api_name="/step")
    assert generated_ids(after) == greedy(tiny_lm, PROMPT, 2)  # still the current model, still going
    # Asking again tries again (a failure is not remembered), and fails the same clear way.
    assert "Could not switch" in choose(client, str(broken_model_dir))[STATUS]


@pytest.mark.parametrize("name", ["gpt2", "/etc", "tinystories"])
def test_a_model_off_the_list_is_refused_by_the_model_event(client, tiny_lm, name):
    with pytest.raises(AppError, match="is not offered here. Choose one of: "):
        choose(client, name)
    view = client.predict(PROMPT, *SETTINGS, api_name="/reset")
    assert prompt_ids(view) == tokstep.tokenize(tiny_lm.tokenizer, PROMPT)


def test_generate_takes_an_allowed_model(client, tiny_lm, other_lm, other_model_dir):
    updates = list(client.submit(PROMPT, 4, False, 1.0, 0, 1.0, 0, str(other_model_dir), api_name="/generate"))
    assert [u["token_id"] for u in updates] == greedy(other_lm, PROMPT, 4)
    assert updates[-1]["text"] == PROMPT + other_lm.texts.decode(greedy(other_lm, PROMPT, 4))
    # Old callers and "" get the default model.
    assert [u["token_id"] for u in client.submit(PROMPT, 4, api_name="/generate")] == greedy(tiny_lm, PROMPT, 4)
    defaulted = client.submit(PROMPT, 2, False, 1.0, 0, 1.0, 0, "", api_name="/generate")
    assert [u["token_id"] for u in defaulted] == greedy(tiny_lm, PROMPT, 2)
    by_keyword = client.submit(PROMPT, 2, model=str(other_model_dir), api_name="/generate")
    assert [u["token_id"] for u in by_keyword] == greedy(other_lm, PROMPT, 2)


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("gpt2", "The model 'gpt2' is not offered here. Choose one of: "),
        ("/etc/passwd", "is not offered here"),
        ("broken", "is not offered here"),
    ],
)
def test_generate_refuses_a_model_off_the_list(client, model, message):
    with pytest.raises(AppError, match=message) as caught:
        client.predict(PROMPT, 2, False, 1.0, 0, 1.0, 0, model, api_name="/generate")
    assert "Traceback" not in str(caught.value)
    assert len(list(client.submit(PROMPT, 2, api_name="/generate"))) == 2  # the server keeps serving


def test_generate_says_why_an_allowed_model_failed_to_load(client, broken_model_dir):
    with pytest.raises(AppError, match="could not be loaded"):
        client.predict(PROMPT, 2, False, 1.0, 0, 1.0, 0, str(broken_model_dir), api_name="/generate")


def write_run(client: Client, tmp_path, model_name: str | None = None):
    with open(client.predict(PROMPT, *SETTINGS, api_name="/export"), encoding="utf-8") as file:
        run = json.load(file)
    if model_name is not None:
        run["model"]["name"] = model_name
    path = tmp_path / "run.json"
    path.write_text(json.dumps(run), encoding="utf-8")
    return path, run


def test_a_run_file_switches_to_its_model(choice_server_url, client, tmp_path, other_lm, other_model_dir):
    choose(client, str(other_model_dir))
    client.predict(PROMPT, *SETTINGS, api_name="/step")
    path, run = write_run(client, tmp_path)

    fresh = Client(choice_server_url, verbose=False)  # on the default model
    view = fresh.predict(handle_file(str(path)), "something else", api_name="/import")
    assert f"Switched to **{other_model_dir}**, the run's model" in view[STATUS]
    assert "made with the model" not in view[STATUS]  # no "another model" warning: it is the same one
    assert generated_ids(view) == [run["steps"][0]["token_id"]]
    # The session goes on with the file's model.
    assert generated_ids(fresh.predict(PROMPT, *SETTINGS, api_name="/step")) == greedy(other_lm, PROMPT, 2)


def test_a_run_file_from_a_model_off_the_list_changes_nothing(client, tiny_lm, tmp_path):
    client.predict(PROMPT, *SETTINGS, api_name="/reset")
    before = client.predict(PROMPT, *SETTINGS, api_name="/step")
    path, _ = write_run(client, tmp_path, model_name="gpt2")
    with pytest.raises(AppError, match="made with the model 'gpt2', which this page does not offer"):
        client.predict(handle_file(str(path)), PROMPT, api_name="/import")
    after = client.predict(PROMPT, *SETTINGS, api_name="/step")
    assert generated_ids(before) == greedy(tiny_lm, PROMPT, 1)
    assert generated_ids(after) == greedy(tiny_lm, PROMPT, 2)  # the page's run went on as if nothing came
    assert after[TEXT] == PROMPT + tiny_lm.texts.decode(greedy(tiny_lm, PROMPT, 2))


def test_generate_names_its_model_argument_after_the_others_and_before_the_optional_views(client):
    # Positional calls written before the views existed still mean what they meant.
    info = client.view_api(return_format="dict", print_info=False)
    parameters = [p["parameter_name"] for p in info["named_endpoints"]["/generate"]["parameters"]]
    assert parameters == [
        "prompt", "max_new_tokens", "sample", "temperature", "top_k", "top_p", "seed", "model", "layers", "attention",
    ]  # fmt: skip
    assert "model` is one of the models the page offers" in str(info["named_endpoints"]["/generate"])


def test_app_offers_the_models_in_tokstep_models(tiny_model_dir, other_model_dir):
    from test_app import start_app, stop, wait_for_page

    listed = f" {other_model_dir} ,, gpt2,{other_model_dir}"  # spaces, an empty entry, a repeat
    app = start_app([], env={"TOKSTEP_MODEL": str(tiny_model_dir), "TOKSTEP_MODELS": listed})
    try:
        components = json.loads(wait_for_page(app.process, app.url))["components"]
    finally:
        stop(app.process)
    dropdown = next(c["props"] for c in components if c.get("props", {}).get("elem_id") == "model")
    assert [choice[1] for choice in dropdown["choices"]] == [str(tiny_model_dir), str(other_model_dir), "gpt2"]
    assert dropdown["value"] == str(tiny_model_dir)
