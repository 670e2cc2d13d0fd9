"""Shared fixtures: GPT-2's real tokenizer, a tiny random GPT-2 saved as a local model
folder, and a real launched tokstep server. No test touches the network."""

from __future__ import annotations

import inspect
import os
import re
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, GPT2Tokenizer

import tokstep
import tokstep.runtimes.kv_layout
import tokstep.testing
from tokstep.core.model import LanguageModel
from tokstep.runtimes.in_process import InProcessRuntime
from tokstep.web.settings import page_arguments

# Tests never reach the Hub; the loader's "is it cached / is the Hub there" checks stay local.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

# The page's default settings as its undocumented events take them, after their other inputs
# (`client.predict(prompt, *SETTINGS, api_name="/step")`). Their order is the page's, which only
# tokstep.web.settings knows: other settings come from `page_arguments(mode=SAMPLE, seed=3)`.
SETTINGS = page_arguments()
TINY_CONTEXT = 64  # positions of the tiny model: small enough to fill in a test
CHROMIUM = os.environ.get("TOKSTEP_CHROMIUM", "/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[1]
# What the browser tests saw, kept for people to look at.
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
# What a failed browser test's tabs showed when it failed (CI keeps test-artifacts/).
FAILURES = ROOT / "test-artifacts" / "failures"


# Markers, given by what a test uses (registered in pyproject.toml). `pytest -m "not slow"` is the
# fast tier for daily work; the README's test command and .ci/run run everything.
BROWSER_FIXTURES = {"browser", "tab", "page"}
SERVER_FIXTURES = {"server_url", "bundled_server_url", "apps", "rest_url"}
# Files whose tests each take seconds: real app processes, benchmark scripts, training, hundreds
# of sessions, every architecture.
SLOW_FILES = {
    "test_app.py",
    "test_architectures.py",
    "test_bench_scripts.py",
    "test_memory.py",
    "test_train_script.py",
    "test_share.py",
    "test_isolation.py",
    "test_failure_evidence.py",
    "test_readme_screenshots.py",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & BROWSER_FIXTURES:
            item.add_marker(pytest.mark.browser)
            item.add_marker(pytest.mark.slow)  # a browser costs seconds per test
        source = _source_of(item)
        if fixtures & SERVER_FIXTURES or "Client(" in source or "serving(" in source:
            item.add_marker(pytest.mark.server)
        if item.path.name in SLOW_FILES:
            item.add_marker(pytest.mark.slow)


def _source_of(item: pytest.Item) -> str:
    function = getattr(item, "function", None)
    try:
        return inspect.getsource(function) if function is not None else ""
    except (OSError, TypeError):
        return ""


@pytest.fixture(scope="session")
def gpt2_tokenizer() -> GPT2Tokenizer:
    return tokstep.testing.gpt2_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, gpt2_tokenizer: GPT2Tokenizer) -> Path:
    """A random GPT-2 with the real vocabulary (50,257) and 64 positions, saved in HF format."""
    torch.manual_seed(1234)
    config = GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=TINY_CONTEXT, tie_word_embeddings=False)
    model = GPT2LMHeadModel(config)
    # Random init gives a nearly flat distribution (logits ~ 0.1); a larger output layer
    # makes it peaked like a trained model's, so greedy choices are unambiguous.
    with torch.no_grad():
        model.lm_head.weight.mul_(40.0)
    folder = tmp_path_factory.mktemp("tiny-gpt2")
    gpt2_tokenizer.save_pretrained(folder)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(autouse=True)
def room_for_every_sequence_stepping_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite's models are tiny: their caches stay below the size from which a sequence
    stepping alone gets room of its own (tokstep.runtimes.kv_layout.ALONE_ROOM_MIN_BYTES), so every test
    that steps alone would miss that path. In tests every such sequence gets it; servers the
    tests start in processes of their own keep the real threshold."""
    monkeypatch.setattr(tokstep.runtimes.kv_layout, "ALONE_ROOM_MIN_BYTES", 0)


@pytest.fixture(scope="session")
def tiny_lm(tiny_model_dir: Path) -> LanguageModel:
    """The tiny model loaded through tokstep's own loader, as the app loads any local folder, on the
    CPU in fp32 wherever the suite runs: tests compare it with fp32 arithmetic on CPU tensors
    (tests/test_gpu.py checks the GPU and its half type)."""
    return tokstep.load(str(tiny_model_dir), device_map="cpu")


@pytest.fixture(scope="session")
def served_lm(tiny_lm: LanguageModel) -> LanguageModel:
    """The tiny model served by the batched in-process runtime, as the app serves its models."""
    return InProcessRuntime().serve(tiny_lm)


def token_labels(page) -> list[str]:
    return page.locator("#tokens .token .label").all_text_contents()


def wait_for_count(page, count: int, timeout: float = 15) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        labels = token_labels(page)
        if len(labels) == count:
            return labels
        time.sleep(0.05)
    raise AssertionError(f"expected {count} tokens on the page, saw {token_labels(page)}")


def open_save_share(page) -> None:
    """Open the page's collapsed "Save and share" accordion (Copy link, export, load a run) when it is
    closed. `page` is a tab or a frame."""
    if not page.locator("#copy-link").is_visible():
        page.locator("#save-share").get_by_text("Save and share").first.click()
    page.locator("#copy-link").wait_for(state="visible", timeout=30_000)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serving(demo, port: int | None = None, **options) -> Iterator[str]:
    """Launch `demo` on `port` (a free localhost port when None) as the app does (LAUNCH_OPTIONS);
    yield its URL. A server started again on the same port is the same origin to a browser."""
    from tokstep.web.page import LAUNCH_OPTIONS

    launch_options = {**LAUNCH_OPTIONS, **options}
    demo.launch(
        prevent_thread_lock=True, server_name="127.0.0.1", server_port=port or free_port(), quiet=True, **launch_options
    )
    try:
        yield demo.local_url
    finally:
        demo.close()


@pytest.fixture(scope="session")
def server_url(tiny_lm: LanguageModel) -> Iterator[str]:
    """A real tokstep server on the tiny model for the whole session."""
    from tokstep.web.page import create_demo

    with serving(create_demo(tiny_lm)) as url:
        yield url


def save_open_tabs(browser, name: str, folder: Path = FAILURES) -> Path:
    """Screenshot every tab open in `browser` as `folder`/`name`-N.png and list them, with each
    tab's address, in `folder`/`name`.txt (returned). A tab that cannot be captured within 5 s
    (its page busy or hung, which is worth knowing too) is listed with the reason."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for number, tab in enumerate((tab for context in browser.contexts for tab in context.pages), start=1):
        path = folder / f"{name}-{number}.png"
        try:
            tab.screenshot(path=str(path), full_page=True, timeout=5000)
            lines.append(f"{path.name}: {tab.url}")
        except Exception as error:  # noqa: BLE001 (evidence for a failure must not replace it)
            lines.append(f"tab {number} ({tab.url}): no screenshot: {type(error).__name__}: {error}".splitlines()[0])
    listing = folder / f"{name}.txt"
    listing.write_text("\n".join(lines or ["no tab was open"]) + "\n")
    return listing


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """When a test that drives the browser fails, keep what its tabs showed (before its fixtures
    close them): a failure seen once in CI can then be looked at."""
    outcome = yield
    report = outcome.get_result()
    browser = getattr(item, "funcargs", {}).get("browser") if report.when == "call" and report.failed else None
    if browser is None:
        return
    try:
        listing = save_open_tabs(browser, re.sub(r"[^\w.-]+", "_", item.nodeid))
        report.sections.append(("browser tabs at the failure", f"{listing}:\n{listing.read_text()}"))
    except Exception as error:  # noqa: BLE001 (the test's own failure is what gets reported)
        report.sections.append(("browser tabs at the failure", f"not saved: {type(error).__name__}: {error}"))


@pytest.fixture(scope="session")
def browser():
    """Debian's Chromium, driven by Playwright (which never downloads a browser here)."""
    if not Path(CHROMIUM).exists():
        # The README's test command installs Chromium; in CI a missing browser is a failure.
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: run scripts/install-chromium.sh")
        pytest.skip(f"{CHROMIUM} is not installed (scripts/install-chromium.sh installs it)")
    from playwright.sync_api import sync_playwright

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
        )
        yield browser
        browser.close()


@pytest.fixture
def tab(browser):
    """A fresh browser tab in a context of its own (a Gradio session of its own), on no page yet."""
    context = browser.new_context(viewport={"width": 1200, "height": 1000})
    yield context.new_page()
    context.close()


@pytest.fixture
def page(browser, server_url):
    """A fresh browser tab (its own Gradio session) on the tiny model's page."""
    context = browser.new_context(viewport={"width": 1200, "height": 1000})
    page = context.new_page()
    page.goto(server_url)
    page.wait_for_selector("#tokens .token")
    yield page
    context.close()


@pytest.fixture(scope="session")
def bundled_lm() -> LanguageModel:
    """The offline model shipped in tokstep/models, loaded by name as users load it."""
    if "tinystories" not in tokstep.bundled_models():
        pytest.skip("the bundled model tokstep/models/tinystories is not there")
    return tokstep.load("tinystories")


@pytest.fixture(scope="session")
def served_bundled_lm(bundled_lm: LanguageModel) -> LanguageModel:
    """The bundled model served by the batched in-process runtime."""
    return InProcessRuntime().serve(bundled_lm)


@pytest.fixture(scope="session")
def bundled_server_url(bundled_lm: LanguageModel) -> Iterator[str]:
    """A real tokstep server on the bundled model, as `python app.py` runs offline."""
    from tokstep.web.page import create_demo

    with serving(create_demo(bundled_lm)) as url:
        yield url
