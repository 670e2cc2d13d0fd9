"""For teachers, through a real launched server (gradio_client): the link to a state, export
to a run file and loading it back, and clear messages for bad files."""

from __future__ import annotations

import json
from urllib.parse import parse_qsl

import pytest
from conftest import SETTINGS
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from test_server import STATUS, TEXT, generated_ids, token_entries

import tokstep
from tokstep.core.run_files import MAX_RUN_BYTES
from tokstep.web.constants import SAMPLE
from tokstep.web.settings import page_arguments
from tokstep.web.views import VIEW_OUTPUTS

PROMPT = "Once upon a time"
SAMPLE_SETTINGS = page_arguments(mode=SAMPLE, temperature=0.8, seed=9)


@pytest.fixture
def client(server_url) -> Client:
    return Client(server_url, verbose=False)


def test_the_link_names_the_prompt_the_number_of_tokens_and_the_settings(client):
    client.predict(PROMPT, *SAMPLE_SETTINGS, api_name="/reset")
    for _ in range(3):
        client.predict(PROMPT, *SAMPLE_SETTINGS, api_name="/step")
    query = client.predict(PROMPT, *SAMPLE_SETTINGS, api_name="/link")
    assert dict(parse_qsl(query.lstrip("?"))) == {
        "prompt": PROMPT, "steps": "3", "mode": "sample", "temperature": "0.8", "top_k": "0", "top_p": "1.0",
        "seed": "9",
    }  # fmt: skip


def export(client: Client, settings=SETTINGS) -> dict:
    with open(client.predict(PROMPT, *settings, api_name="/export"), encoding="utf-8") as file:
        return json.load(file)


def test_export_then_load_gives_the_same_tokens_in_a_fresh_session(client, server_url, tiny_lm, tmp_path):
    client.predict(PROMPT, *SETTINGS, api_name="/reset")
    client.predict(PROMPT, *SETTINGS, api_name="/step")
    before = client.predict(PROMPT, *SAMPLE_SETTINGS, api_name="/step")
    run = export(client, SAMPLE_SETTINGS)
    assert [s["chosen_by"] for s in run["steps"]] == ["greedy", "sampled"]
    assert run["model"]["name"] == tiny_lm.name and run["settings"]["sampling"]["seed"] == 9
    path = tmp_path / "run.json"
    path.write_text(json.dumps(run), encoding="utf-8")

    fresh = Client(server_url, verbose=False)
    after = fresh.predict(handle_file(str(path)), "something else", api_name="/import")
    assert token_entries(after) == token_entries(before)  # ids, ranks and "sampled" marks
    assert after[TEXT] == before[TEXT]
    assert "Loaded a run: 2 generated tokens" in after[STATUS]
    # The page's settings come from the file: the prompt, then every setting (in the page's order).
    assert after[len(VIEW_OUTPUTS) - 1 :] == (PROMPT, *SAMPLE_SETTINGS)  # after the view (no gr.State sent)
    # The session goes on from the loaded state: the next seeded draw is the original's.
    stepper = tokstep.TokenStepper.from_text(tiny_lm, PROMPT)
    for recorded in run["steps"]:
        stepper.step(5, token_id=recorded["token_id"])
    expected = stepper.step(5, sampling=tokstep.SamplingSettings(temperature=0.8, seed=9)).token_id
    assert generated_ids(fresh.predict(PROMPT, *SAMPLE_SETTINGS, api_name="/step"))[-1] == expected


def test_another_models_file_loads_with_a_warning(client, tmp_path):
    client.predict(PROMPT, *SETTINGS, api_name="/reset")
    client.predict(PROMPT, *SETTINGS, api_name="/step")
    run = export(client)
    run["model"]["name"] = "gpt2"
    path = tmp_path / "gpt2-run.json"
    path.write_text(json.dumps(run), encoding="utf-8")
    view = client.predict(handle_file(str(path)), PROMPT, api_name="/import")
    assert "made with the model 'gpt2'" in view[STATUS]
    assert generated_ids(view) == [run["steps"][0]["token_id"]]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"format": "tokstep-run", "version": 1, ', "not valid JSON"),
        (b'{"format": "tokstep-run", "version": 7}', "from a newer tokstep"),
        (b'{"hello": "world"}', "not a tokstep run file"),
        (b" " * (MAX_RUN_BYTES + 10), "a tokstep run file is at most"),
    ],
)
def test_bad_files_get_a_clear_message_and_the_state_stays(client, tmp_path, content, message):
    client.predict(PROMPT, *SETTINGS, api_name="/reset")
    before = client.predict(PROMPT, *SETTINGS, api_name="/step")
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(AppError, match=message) as caught:
        client.predict(handle_file(str(path)), PROMPT, api_name="/import")
    assert "Traceback" not in str(caught.value)
    # Nothing was lost: the next step continues the same run.
    after = client.predict(PROMPT, *SETTINGS, api_name="/step")
    assert generated_ids(after)[:-1] == generated_ids(before)


def test_out_of_range_ids_are_refused(client, tiny_lm, tmp_path):
    client.predict(PROMPT, *SETTINGS, api_name="/reset")
    client.predict(PROMPT, *SETTINGS, api_name="/step")
    run = export(client)
    run["steps"][0]["token_id"] = tiny_lm.vocab_size
    path = tmp_path / "out-of-range.json"
    path.write_text(json.dumps(run), encoding="utf-8")
    with pytest.raises(AppError, match="outside this model's vocabulary"):
        client.predict(handle_file(str(path)), PROMPT, api_name="/import")
