"""For teachers, in a real browser: a preset link, Copy link reopening the same tokens, export
and load of a run file, and the demo embedded in docs/embed.html's iframe."""

from __future__ import annotations

import functools
import http.server
import json
import threading
import time
from pathlib import Path
from urllib.parse import quote

import pytest
from conftest import ROOT, SCREENSHOTS, free_port, open_save_share, token_labels, wait_for_count

import tokstep
from tokstep.web.page import LAUNCH_OPTIONS

PROMPT = "The little dog"


def labels_of(lm, prompt: str, steps: int, sampling=None) -> list[str]:
    """What the chips of a prompt stepped `steps` times read, derived from the engine."""
    prompt_ids = tokstep.tokenize(lm.tokenizer, prompt)
    mark = " sampled" if sampling else ""
    run = tokstep.generate_steps(lm, prompt, max_new_tokens=steps, sampling=sampling) if steps else []
    return [str(i) for i in prompt_ids] + [f"+{s.token_id} · #{s.rank}{mark}" for s in run]


def open_page(tab, url: str, count: int) -> list[str]:
    tab.goto(url)
    tab.wait_for_selector("#tokens .token")
    return wait_for_count(tab, count)


def test_a_preset_link_opens_stepped_and_copy_link_reopens_the_same_tokens(tab, browser, server_url, tiny_lm):
    sampling = tokstep.SamplingSettings(temperature=0.7, seed=5)
    expected = labels_of(tiny_lm, PROMPT, 4, sampling)
    url = f"{server_url}?prompt={quote(PROMPT)}&steps=4&mode=sample&seed=5&temperature=0.7"
    assert open_page(tab, url, len(expected)) == expected
    assert tab.locator("#prompt textarea").input_value() == PROMPT

    tab.click("#step")  # one more seeded token, then the link to this state
    wait_for_count(tab, len(expected) + 1)
    open_save_share(tab)
    tab.click("#copy-link")
    tab.wait_for_function("document.querySelector('#link textarea').value.startsWith('http')")
    link = tab.locator("#link textarea").input_value()
    assert link.startswith(server_url) and "steps=5" in link
    shown = token_labels(tab)

    other = browser.new_context(viewport={"width": 1200, "height": 1000})
    try:
        fresh = other.new_page()
        assert open_page(fresh, link, len(shown)) == shown == labels_of(tiny_lm, PROMPT, 5, sampling)
        assert fresh.locator("#text textarea").input_value() == tab.locator("#text textarea").input_value()
    finally:
        other.close()


def test_a_bad_preset_says_why_and_falls_back(tab, server_url, tiny_lm):
    default = labels_of(tiny_lm, "Once upon a time", 0)
    assert open_page(tab, f"{server_url}?steps=lots", len(default)) == default
    tab.wait_for_function("document.querySelector('#status').innerText.includes('must be a whole number')")
    assert "so no tokens were generated" in tab.inner_text("#status")
    tab.click("#step")  # the page works as usual
    wait_for_count(tab, len(default) + 1)


def test_export_and_load_a_run_in_the_browser(page, tmp_path):
    n_prompt = len(token_labels(page))
    page.locator("#topk button").nth(2).click()  # a pick, the 3rd candidate
    wait_for_count(page, n_prompt + 1)
    page.click("#step")
    before = wait_for_count(page, n_prompt + 2)
    assert before[n_prompt].endswith(" picked")

    open_save_share(page)
    page.click("#export")
    with page.expect_download() as download:
        page.locator("#export-file a").first.click()
    path = tmp_path / "run.json"
    download.value.save_as(path)
    run = json.loads(path.read_text(encoding="utf-8"))
    assert [f"+{s['token_id']}" for s in run["steps"]] == [label.split()[0] for label in before[n_prompt:]]

    page.click("#reset")
    wait_for_count(page, n_prompt)
    with page.expect_file_chooser() as chooser:
        page.click("#import")
    chooser.value.set_files(str(path))
    assert wait_for_count(page, n_prompt + 2) == before
    time.sleep(0.5)
    assert token_labels(page) == before  # the restored prompt does not restart the page

    # A broken file: a clear message, and the tokens stay.
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "tokstep-run", "version": 99}', encoding="utf-8")
    with page.expect_file_chooser() as chooser:
        page.click("#import")
    chooser.value.set_files(str(bad))
    page.wait_for_selector("text=newer tokstep")
    assert token_labels(page) == before
    page.screenshot(path=str(SCREENSHOTS / "teachers-load-error.png"), full_page=True)


@pytest.fixture
def docs_server():
    """docs/ served over http, as a course page would be."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(ROOT / "docs"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_the_demo_steps_inside_the_embed_pages_iframe(tab, docs_server, server_url, tiny_lm):
    assert Path(ROOT / "docs" / "embed.html").exists()
    # The web component's script comes from a CDN the tests cannot reach: only the iframe is checked.
    # Nor can the page's placeholder Space be reached, which the frame names until ?src= replaces it.
    for unreachable in ("https://gradio.s3-us-west-2.amazonaws.com/**", "https://YOUR-NAME-tokstep.hf.space/**"):
        tab.route(unreachable, lambda route: route.abort())
    tab.goto(f"{docs_server}embed.html?src={quote(server_url)}")
    # The frame navigates twice (the placeholder, aborted, then the demo). Playwright's list of the
    # page's frames can keep an empty URL for this frame until the frame is asked for through its
    # element (seen with Chromium 156: a frame_locator then read no chips for a minute), so the
    # demo's frame is taken from the iframe element until it shows the demo.
    deadline = time.monotonic() + 60
    while not (frame := tab.locator("#tokstep-frame").element_handle().content_frame()).url.startswith(server_url):
        assert time.monotonic() < deadline, f"the iframe never showed the demo: {frame.url!r}"
        time.sleep(0.1)
    expected = labels_of(tiny_lm, "Once upon a time", 4)
    # wait_for_count returns the labels it counted: no second read that could catch a re-render.
    assert wait_for_count(frame, len(expected) - 1, timeout=60) == expected[:-1]  # the link's preset: 3 tokens
    frame.locator("#step").click()
    assert wait_for_count(frame, len(expected)) == expected
    # Copy link inside the iframe links to the demo itself, not to the page around it.
    open_save_share(frame)
    frame.locator("#copy-link").click()
    link_box = frame.locator("#link textarea")
    deadline = time.monotonic() + 15
    while not link_box.input_value().startswith("http") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert link_box.input_value().startswith(server_url + "?prompt=Once+upon+a+time&steps=4")
    tab.screenshot(path=str(SCREENSHOTS / "embedded.png"), full_page=True)


def test_a_file_over_the_upload_limit_is_refused_with_a_message(page, tmp_path):
    before = token_labels(page)
    huge = tmp_path / "huge.json"
    huge.write_bytes(b" " * (LAUNCH_OPTIONS["max_file_size"] + 1))
    open_save_share(page)
    with page.expect_file_chooser() as chooser:
        page.click("#import")
    chooser.value.set_files(str(huge))
    page.wait_for_selector("text=exceed the maximum allowed size")
    assert token_labels(page) == before
