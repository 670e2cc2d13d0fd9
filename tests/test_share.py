"""`python app.py --share` without a network: one clear line, and the local server keeps running."""

from __future__ import annotations

import time

from conftest import free_port
from gradio_client import Client
from test_app import start_app, stop, wait_for_page


def test_share_offline_says_so_in_one_line_and_keeps_serving(tiny_model_dir):
    # A proxy that is not there: https requests fail at once, as they do with no network at
    # all, even on a machine that has one. Local requests bypass it.
    dead_proxy = f"http://127.0.0.1:{free_port()}"
    env = {"HTTPS_PROXY": dead_proxy, "https_proxy": dead_proxy, "NO_PROXY": "127.0.0.1,localhost"}
    env["no_proxy"] = env["NO_PROXY"]
    app = start_app(["--model", str(tiny_model_dir), "--share"], env=env)
    process, url = app.process, app.url
    try:
        wait_for_page(process, url)
        time.sleep(1.0)
        assert process.poll() is None, "the app exited"
        update = list(Client(url, verbose=False).submit("Once upon a time", 1, api_name="/generate"))[-1]
        assert update["stop_reason"] == "max_new_tokens"
    finally:
        err = stop(process)
    line = f"tokstep: could not open a share link (no network?); the local server keeps running at {url}"
    assert err.count("tokstep: could not open a share link") == 1
    assert line.rstrip("/") in err
    assert "Traceback" not in err and "Could not create share link" not in err
