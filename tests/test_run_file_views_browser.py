"""Run files with the new views, in a real browser (Chromium + Playwright): **Export + Why (JSON)**
(pressed from the keyboard) saves each token's layer by layer and where it looked, and a run exported
beside a comparison of two models brings that comparison back on Load a run, in a fresh tab, row for
row; a file whose run is refused brings nothing back. At a desktop's width, a phone's and in the dark
theme; screenshots go to test-artifacts/screenshots/."""

from __future__ import annotations

import json
import time

import pytest
from conftest import SCREENSHOTS, open_save_share, token_labels, wait_for_count
from test_compare_browser import VIEWPORTS, WAIT_MS, rows, wait_for_rows
from test_page_a11y import contrast

from tokstep.core.compare import start_pair, step_pair
from tokstep.core.run_files import dumps_run, export_run
from tokstep.core.stepper import TokenStepper

pytest_plugins = ["model_choice_support"]

COMPARE_STEPS = 3
PROMPT = "Once upon a time"


def download_export(tab, button: str, path) -> dict:
    """Press `button` from the keyboard and save the run file it gives."""
    tab.locator(button).focus()
    tab.keyboard.press("Enter")
    link = tab.locator("#export-file a").first
    link.wait_for(state="visible", timeout=WAIT_MS)
    with tab.expect_download() as download:
        link.click()
    download.value.save_as(path)
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("view", list(VIEWPORTS))
def test_export_with_the_views_and_a_comparison_that_comes_back_on_load(
    browser, choice_server_url, tiny_lm, tmp_path, view
):
    viewport, query = VIEWPORTS[view]
    phone = viewport["width"] < 500
    contexts = [browser.new_context(viewport=viewport, is_mobile=phone, has_touch=phone, accept_downloads=True)
                for _ in range(2)]  # fmt: skip
    try:
        tab = contexts[0].new_page()
        tab.goto(choice_server_url + query)
        tab.wait_for_selector("#tokens .token", timeout=WAIT_MS)
        n_prompt = len(token_labels(tab))
        tab.click("#step")
        wait_for_count(tab, n_prompt + 1)
        # Two models side by side, a few steps.
        tab.locator("#compare").get_by_text("Two models side by side").first.click()
        step = tab.locator("#compare-step")
        step.wait_for(state="visible", timeout=WAIT_MS)
        for count in range(1, COMPARE_STEPS + 1):
            step.click()
            wait_for_rows(tab, count)
        shown = tab.locator("#compare-table tbody").inner_text()

        open_save_share(tab)
        button = tab.locator("#export-why")
        assert button.inner_text() == "Export + Why (JSON)"
        assert contrast(tab, "#export-why") >= 4.5
        box = button.bounding_box()
        assert box["height"] >= 44 and box["x"] + box["width"] <= viewport["width"]
        run = download_export(tab, "#export-why", tmp_path / "why.json")
        layers = tiny_lm.model.config.num_hidden_layers
        assert len(run["steps"]) == 1
        step_record = run["steps"][0]
        assert len(step_record["layers"]) == layers + 1
        assert [c[0] for c in step_record["layers"][-1]["top"]] == [c[0] for c in step_record["top"]]
        assert len(step_record["attention"]["tokens"]) == n_prompt
        assert len(run["comparison"]["rows"]) == COMPARE_STEPS
        tab.locator("#save-share").screenshot(path=str(SCREENSHOTS / f"export-why-{view}.png"))

        # A fresh tab loads the file: the run's tokens and the comparison's rows come back.
        fresh = contexts[1].new_page()
        fresh.goto(choice_server_url + query)
        fresh.wait_for_selector("#tokens .token", timeout=WAIT_MS)
        open_save_share(fresh)
        with fresh.expect_file_chooser() as chooser:
            fresh.click("#import")
        chooser.value.set_files(str(tmp_path / "why.json"))
        wait_for_count(fresh, n_prompt + 1)
        fresh.locator("#compare").get_by_text("Two models side by side").first.click()
        wait_for_rows(fresh, COMPARE_STEPS)
        assert fresh.locator("#compare-table tbody").inner_text() == shown
        assert "Loaded the run file's comparison." in fresh.inner_text("#compare-status")
        fresh.locator("#compare-step").click()  # it goes on from there
        wait_for_rows(fresh, COMPARE_STEPS + 1)
        assert rows(fresh) == COMPARE_STEPS + 1
        fresh.locator("#compare").screenshot(path=str(SCREENSHOTS / f"compare-loaded-{view}.png"))
    finally:
        for context in contexts:
            context.close()


def test_a_refused_run_brings_no_comparison_either(
    tab, choice_server_url, tiny_lm, other_lm, other_model_dir, tmp_path
):
    pair = start_pair(TokenStepper.from_text(tiny_lm, PROMPT), TokenStepper.from_text(other_lm, PROMPT),
                      (tiny_lm.name, str(other_model_dir)))  # fmt: skip
    step_pair(*pair)
    stepper = TokenStepper.from_text(tiny_lm, PROMPT)
    stepper.step()
    run = export_run(stepper, comparison=pair)
    run["steps"][0]["token_id"] = tiny_lm.vocab_size + 5  # the run itself cannot load
    path = tmp_path / "refused.json"
    path.write_text(dumps_run(run), encoding="utf-8")
    tab.goto(choice_server_url)
    tab.wait_for_selector("#tokens .token", timeout=WAIT_MS)
    before = token_labels(tab)
    open_save_share(tab)
    with tab.expect_file_chooser() as chooser:
        tab.click("#import")
    chooser.value.set_files(str(path))
    tab.wait_for_selector("text=outside this model's vocabulary", timeout=WAIT_MS)
    tab.locator("#compare").get_by_text("Two models side by side").first.click()
    tab.locator("#compare-step").wait_for(state="visible", timeout=WAIT_MS)
    time.sleep(1)  # the comparison would have been put back by now
    assert rows(tab) == 0 and token_labels(tab) == before  # nothing on the page changed
