"""Safety of a public demo: no remote code, no model or file chosen by a visitor, no tracebacks."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

import tokstep


def test_remote_code_in_a_model_folder_is_never_run(tmp_path, tiny_model_dir):
    marker = tmp_path / "pwned"
    folder = tmp_path / "evil-model"
    folder.mkdir()
    config = json.loads((tiny_model_dir / "config.json").read_text())
    config["model_type"] = "evil-gpt"
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    for name in ("tokenizer.json", "tokenizer_config.json", "model.safetensors"):
        (folder / name).write_bytes((tiny_model_dir / name).read_bytes())
    with pytest.raises(tokstep.ModelLoadError):
        tokstep.load(str(folder))
    assert not marker.exists(), "code from the model folder ran"


def test_the_api_takes_no_model_name_path_or_file(server_url):
    info = Client(server_url, verbose=False).view_api(return_format="dict", print_info=False)
    assert set(info["named_endpoints"]) == {"/generate"}
    parameters = [p["parameter_name"] for p in info["named_endpoints"]["/generate"]["parameters"]]
    assert parameters == [
        "prompt", "max_new_tokens", "sample", "temperature", "top_k", "top_p", "seed", "layers", "attention",
    ]  # fmt: skip
    assert info["unnamed_endpoints"] == {}


@pytest.mark.parametrize(
    "path",
    [
        "gradio_api/file=/etc/passwd",
        "file=/etc/passwd",
        "gradio_api/file=../../../../etc/passwd",
        "gradio_api/file=app.py",
    ],
)
def test_server_files_cannot_be_read_through_the_page(server_url, path):
    try:
        with urllib.request.urlopen(server_url + path, timeout=5) as response:
            body = response.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        assert error.code in (400, 403, 404)
        return
    assert "root:" not in body and "create_demo" not in body


def test_errors_carry_no_traceback_or_server_details(server_url):
    client = Client(server_url, verbose=False)
    with pytest.raises(AppError) as caught:
        client.predict({"not": "text"}, 3, api_name="/generate")
    message = str(caught.value)
    assert "Traceback" not in message and 'File "' not in message and "/tokstep/" not in message
