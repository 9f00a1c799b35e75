"""The dashboard in a real headless Chromium against the running suite: sign in with a token,
run a template with a file (the form is generated from the template's placeholders), watch
the workflow complete over SSE, see the image in the outputs and in the gallery, the live list
with its filter, the runners; and run an uploaded workflow JSON.

Screenshots go to a temporary folder (its path is printed); with DASHBOARD_SCREENSHOTS=update
the ones worth showing are also copied to tests/dashboard/screenshots/.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from services.devrun import Suite

pytestmark = pytest.mark.timeout(90)

SHOTS_KEPT = Path(__file__).resolve().parent / "screenshots"
TIMEOUT_MS = 20_000
TEMPLATE_BODY: dict[str, Any] = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "$file(photo)"}},
    "2": {"class_type": "ImageScale",
          "inputs": {"image": ["1", 0], "upscale_method": "$choice(method, nearest-exact, bilinear, area)",
                     "width": 96, "height": 64, "crop": "disabled"}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "$text(prefix, dashboard)"}},
}
UPLOADED_WORKFLOW: dict[str, Any] = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 72, "height": 40, "batch_size": 1, "color": 3368652}},
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "$text(prefix)"}},
}
IMAGE_LOADED = """sel => { const i = document.querySelector(sel);
                           return i !== null && i.complete && i.naturalWidth > 0 ? i.naturalWidth : 0; }"""


def photo(path: Path) -> Path:
    image = Image.new("RGB", (48, 32))
    image.putdata([(x * 5, y * 7, 160) for y in range(32) for x in range(48)])
    out = io.BytesIO()
    image.save(out, format="PNG")
    path.write_bytes(out.getvalue())
    return path


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("screenshots")
    yield folder
    print(f"\ndashboard screenshots: {folder}")
    if os.environ.get("DASHBOARD_SCREENSHOTS") == "update":
        SHOTS_KEPT.mkdir(exist_ok=True)
        for name in ("run.png", "workflow.png", "runners.png"):
            if (folder / name).exists():
                shutil.copy(folder / name, SHOTS_KEPT / name)


@pytest.fixture
def page(browser: Any, suite: Suite) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(f"{suite.gateway_url}/")
    yield page
    context.close()
    assert errors == [], f"JavaScript errors in the page: {errors}"


def sign_in(page: Any, token: str) -> None:
    page.fill("#token", token)
    page.click("#sign-in button[type=submit]")
    page.wait_for_selector("#sign-out")


def wait_completed(page: Any) -> None:
    page.wait_for_selector("#workflow-status .status-completed", timeout=45_000)


def test_a_bad_token_is_refused_and_nothing_is_kept(page: Any) -> None:
    page.fill("#token", "cf_not_a_token")
    page.click("#sign-in button[type=submit]")
    page.wait_for_selector("#sign-in .error")
    assert "refused" in page.inner_text("#sign-in .error") or "not accepted" in page.inner_text("#sign-in .error")
    assert page.evaluate("sessionStorage.getItem('comfyfleet.token')") is None
    assert page.locator("#sign-out").count() == 0


def test_run_a_template_with_a_file_watch_it_complete_and_see_the_image(
    page: Any, suite: Suite, tmp_path: Path, shots: Path
) -> None:
    api = httpx.Client(base_url=suite.gateway_url, headers={"Authorization": f"Bearer {suite.token}"}, timeout=30)
    made = api.post("/v1/template", data={"name": "scale a photo", "description": "scales an uploaded photo"},
                    files={"body": ("body.json", json.dumps(TEMPLATE_BODY), "application/json")})
    assert made.status_code == 201, made.text

    sign_in(page, suite.token)
    page.click("nav >> text=Run")
    page.select_option("#source", label="Template: scale a photo")
    # The form comes from the template's placeholders: a file picker, a select, a text input.
    page.wait_for_selector("#field-file-photo[type=file]")
    assert not page.is_visible("#workflow-file")  # a template brings its own graph
    assert page.eval_on_selector_all("#field-choice-method option", "os => os.map(o => o.value)") == [
        "nearest-exact", "bilinear", "area"]
    assert page.get_attribute("#field-text-prefix", "placeholder") == "dashboard"
    page.set_input_files("#field-file-photo", str(photo(tmp_path / "photo.png")))
    page.select_option("#field-choice-method", "bilinear")
    page.fill("#field-text-prefix", "from_the_browser")
    name = "<b>scaled</b> & <img src=x onerror=alert(1)>"  # shown as text, never parsed as HTML
    page.fill("#name", name)
    page.fill("#tags", "gpu")
    page.screenshot(path=str(shots / "run.png"), full_page=True)
    page.click("#submit")

    page.wait_for_url("**/#/workflow/*")
    wait_completed(page)
    width = page.wait_for_function(IMAGE_LOADED, arg="#outputs img").json_value()
    assert width == 96  # the output of ImageScale, served through its signed URL
    assert page.inner_text("main h2") == name
    assert page.locator("main h2 b, main h2 img").count() == 0
    timeline = page.inner_text("#timeline")
    for seen in ("status: accepted", "status: running", "executing: node 2", "output: from_the_browser",
                 "status: completed"):
        assert seen in timeline, timeline
    assert "from_the_browser" in page.inner_text("#outputs figcaption")
    workflow_id = page.url.rsplit("/", 1)[-1]
    record = api.get(f"/v1/workflow/{workflow_id}").json()
    assert record["status"] == "completed" and record["tags"] == ["gpu"]
    assert ["$choice(method, nearest-exact, bilinear, area)", "bilinear"] in record["workflow_params"]
    page.screenshot(path=str(shots / "workflow.png"), full_page=True)

    page.click("nav >> text=Gallery")
    page.wait_for_selector("#gallery img")
    assert page.wait_for_function(IMAGE_LOADED, arg="#gallery img").json_value() == 96
    page.screenshot(path=str(shots / "gallery.png"), full_page=True)

    page.click("nav >> text=Workflows")
    row = page.locator("#workflows tbody tr", has_text="scaled")
    row.locator(".status-completed").wait_for()
    page.select_option("#status-filter", "failed")
    page.wait_for_selector("#workflows >> text=No workflows yet.")
    page.select_option("#status-filter", "completed")
    row.locator(".status-completed").wait_for()
    assert page.url.endswith("#/workflows?status=completed")
    page.reload()  # the filter is in the address; the token survives a reload (sessionStorage)
    row.locator(".status-completed").wait_for()
    assert page.input_value("#status-filter") == "completed"
    page.screenshot(path=str(shots / "workflows.png"), full_page=True)

    page.click("nav >> text=Runners")
    runner = page.locator("#runners tbody tr", has_text="local-runner")
    runner.locator(".conn-online").wait_for()
    cells = runner.inner_text()
    assert "gpu" in cells and "fast" in cells and "active" in cells and "0.3.64" in cells
    page.screenshot(path=str(shots / "runners.png"), full_page=True)
    runner.locator("button", has_text="Disable").click()
    runner.locator("button", has_text="Enable").wait_for()
    assert api.get("/v1/runner").json()["runners"][0]["status"] == "disabled"
    runner.locator("button", has_text="Enable").click()
    runner.locator("button", has_text="Disable").wait_for()
    assert api.get("/v1/runner").json()["runners"][0]["status"] == "active"
    api.close()


def test_run_an_uploaded_workflow_json(page: Any, suite: Suite, tmp_path: Path, shots: Path) -> None:
    graph = tmp_path / "invert.json"
    graph.write_text(json.dumps(UPLOADED_WORKFLOW))
    sign_in(page, suite.token)
    page.click("nav >> text=Run")
    page.set_input_files("#workflow-file", str(graph))
    page.wait_for_selector("#field-text-prefix[required]")  # no default: required
    assert page.input_value("#name") == "invert"
    page.fill("#field-text-prefix", "inverted")
    page.click("#submit")
    wait_completed(page)
    assert page.wait_for_function(IMAGE_LOADED, arg="#outputs img").json_value() == 72
    assert page.locator("#outputs figcaption", has_text="inverted").count() == 1


def test_an_invalid_workflow_shows_its_node_errors_and_a_refused_one_the_api_error(
    page: Any, suite: Suite, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "ImageScale", "inputs": {"image": ["1", 0], "upscale_method": "sideways",
                                                     "width": 8, "height": 8, "crop": "disabled"}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "bad"}},
    }))
    ui_export = tmp_path / "ui.json"
    ui_export.write_text(json.dumps({"nodes": [], "links": [], "version": 0.4}))
    sign_in(page, suite.token)
    page.click("nav >> text=Run")
    page.set_input_files("#workflow-file", str(ui_export))
    page.click("#submit")
    page.wait_for_selector("#run-form .error")
    assert page.inner_text("#run-form .error").startswith("400: ")

    page.set_input_files("#workflow-file", str(bad))
    page.click("#submit")
    page.wait_for_selector("#workflow-status .status-invalid", timeout=45_000)
    errors = page.inner_text("#node-errors")
    assert "ImageScale" in errors and "upscale_method" in errors, errors


def test_a_429_is_waited_out_then_the_list_shows(page: Any, suite: Suite) -> None:
    refused: list[str] = []

    def once_rate_limited(route: Any) -> None:
        if not refused:
            refused.append(route.request.url)
            route.fulfill(status=429, headers={"Retry-After": "1", "Content-Type": "application/json"},
                          body=json.dumps({"status": 429, "message": "rate limit exceeded", "reason": "RATE_LIMITED"}))
        else:
            route.continue_()

    page.route("**/v1/workflow?*", once_rate_limited)
    sign_in(page, suite.token)
    page.wait_for_selector("#workflows tbody tr")
    assert len(refused) == 1 and page.locator("main .error").count() == 0


def test_the_gallery_picks_a_player_by_content_type_and_never_a_script_url(page: Any, suite: Suite) -> None:
    wf = {"id": "00000000-0000-4000-8000-000000000001", "name": "media", "status": "completed", "tags": [],
          "created_at": None, "updated_at": None, "started_at": None, "completed_at": None}
    outputs = [
        {"id": "v", "workflow_id": wf["id"], "src": "/v1/objects/clip.mp4", "filename": "clip.mp4",
         "content_type": "video/mp4", "size": 1, "node_id": "9"},
        {"id": "a", "workflow_id": wf["id"], "src": "/v1/objects/sound.wav", "filename": "sound.wav",
         "content_type": "audio/wav", "size": 1, "node_id": "9"},
        {"id": "j", "workflow_id": wf["id"], "src": "javascript:alert(1)", "filename": "data.json",
         "content_type": "application/json", "size": 1, "node_id": "9"},
    ]
    page.route("**/v1/workflow?*", lambda route: route.fulfill(json={"workflows": [wf], "total": 1}))
    page.route("**/v1/workflow/*/outputs", lambda route: route.fulfill(json=outputs))
    sign_in(page, suite.token)
    page.click("nav >> text=Gallery")
    page.wait_for_selector("#gallery figure")
    assert page.get_attribute("#gallery video", "src") == f"{suite.gateway_url}/v1/objects/clip.mp4"
    assert page.get_attribute("#gallery video", "controls") is not None
    assert page.get_attribute("#gallery audio", "src") == f"{suite.gateway_url}/v1/objects/sound.wav"
    assert page.inner_text("#gallery figure[data-type='application/json'] .file") == "application/json"
    assert page.get_attribute("#gallery figure[data-type='application/json'] figcaption a:last-child",
                              "href") == "about:blank"
