"""A real headless browser (Debian ``chromium`` driven by Playwright) on ``python app.py --model tiny``: type a
prompt, click Generate, see an image; send it to Edit and edit it; run a Compare; and keep a screenshot of each tab
in ``docs/screenshots/`` for the README.

Installed by ``.ci/setup-browser`` (``apt-get install chromium``, ``pip install playwright``; never
``playwright install``). Skipped, with the reason, where either is missing. Screenshots go to a temporary folder
unless ``DEEPGEN_UPDATE_SCREENSHOTS=1`` (then into ``docs/screenshots/``, to refresh the README's pictures).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from test_app_http import EXAMPLE, AppServer

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).is_file():
    pytest.skip("chromium is not installed (run .ci/setup-browser: apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (run .ci/setup-browser)")

DOCS_SCREENSHOTS = Path(__file__).resolve().parents[1] / "docs" / "screenshots"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
RESULT_TIMEOUT_MS = 120_000


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Path:
    folder = DOCS_SCREENSHOTS if os.environ.get("DEEPGEN_UPDATE_SCREENSHOTS") == "1" else \
        tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("browser")
    app = AppServer(folder / "app.log", temp=folder / "gradio-temp").wait_ready()
    yield app
    app.stop()


@pytest.fixture(scope="module")
def page(server):
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(server.url)
        page.wait_for_selector("#model-banner")
        page.get_by_text("Example prompts").wait_for()  # the whole app has mounted
        yield page
        browser.close()


def fill(box, text: str) -> None:
    """Fill a field and make sure the value stuck (a field filled while the page is still mounting is reset)."""
    for _ in range(20):
        box.fill(text)
        box.page.wait_for_timeout(250)
        if box.input_value() == text:
            return
    raise AssertionError(f"could not type {text!r} into {box}")


def set_number(page, elem_id: str, value: int) -> None:
    """Type into the number box of a Gradio slider/number (what a person does to set it exactly)."""
    box = page.locator(f"#{elem_id} input[type=number]")
    fill(box, str(value))
    box.press("Enter")


def small_settings(page, tab: str) -> None:
    """64x64 and 1 step, so the tiny CPU model answers in about a second."""
    for name, value in (("width", 64), ("height", 64), ("steps", 1)):
        set_number(page, f"{tab}-{name}", value)


def test_empty_prompt_is_refused_with_a_clear_message(page):
    assert "Running model" in page.locator("#model-banner").inner_text()
    page.locator("#generate-button").click()
    # the validator's message shows on the field, before anything is queued
    page.locator("#generate-prompt").get_by_text("The prompt is empty").wait_for(state="visible", timeout=30_000)


def test_generate_shows_an_image(page, screenshots):
    fill(page.locator("#generate-prompt textarea"), "a red circle in the center")
    small_settings(page, "generate")
    page.locator("#generate-randomize input").uncheck()  # seed 0: the same picture every run
    page.locator("#generate-button").click()
    page.locator("#generate-gallery img").first.wait_for(state="visible", timeout=RESULT_TIMEOUT_MS)
    assert "seeds" in page.locator("#generate-info").inner_text()
    page.screenshot(path=screenshots / "generate.png", full_page=True)


def test_send_to_edit_and_edit(page, screenshots):
    page.locator("#send-to-edit").click()
    page.locator("#edit-instruction textarea").wait_for(state="visible")
    fill(page.locator("#edit-instruction textarea"), "make the circle blue")
    set_number(page, "edit-steps", 1)
    page.locator("#edit-randomize input").uncheck()
    page.locator("#edit-button").click()
    page.locator("#edit-slider img").first.wait_for(state="visible", timeout=RESULT_TIMEOUT_MS)
    page.screenshot(path=screenshots / "edit.png", full_page=True)


def test_compare_side_by_side(page, screenshots):
    page.get_by_role("tab", name="Compare").click()
    # Offline only `tiny` can run; the second contestant is a hub baseline that shows up as unavailable.
    page.locator("#compare-contestants label", has_text="Stable Diffusion 3.5 Medium").click()
    fill(page.locator("#compare-prompt textarea"), "a small blue square at the top left")
    small_settings(page, "compare")
    page.locator("#compare-randomize input").uncheck()
    page.locator("#compare-button").click()
    page.locator("#compare-gallery img").first.wait_for(state="visible", timeout=RESULT_TIMEOUT_MS)
    page.locator("#compare-summary table").wait_for(state="visible")
    page.screenshot(path=screenshots / "compare.png", full_page=True)


def test_an_upload_is_previewed_and_leaves_no_empty_temp_file(page, server):
    """gr.File.preprocess writes an empty temp file per file; the Edit tab's listeners take raw payloads instead."""
    page.get_by_role("tab", name="Edit").click()
    page.locator("#edit-images input[type=file]").set_input_files(str(EXAMPLE))
    page.locator("#edit-preview img").first.wait_for(state="visible", timeout=RESULT_TIMEOUT_MS)
    assert [path for path in server.temp.rglob("*") if path.is_file() and path.stat().st_size == 0] == []
