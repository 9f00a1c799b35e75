"""One workflow from upload to stored output, over HTTP only, through real processes.

The suite (storage, scheduler, gateway, runner) and the ComfyUI double run as separate
processes on loopback; everything here goes through the gateway's public API, except the
checks of what the double received, which use ComfyUI's own /history and /view.
"""

from __future__ import annotations

import io
import json
import signal
import time
from typing import Any

import httpx
import pytest
from PIL import Image

from services.devrun import Suite
from tests.integration.sse import frames

WORKFLOW = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "$file(photo)"}},
    "2": {
        "class_type": "ImageScale",
        "inputs": {"image": ["1", 0], "upscale_method": "$choice(method, nearest-exact, bilinear, area)",
                   "width": 64, "height": 48, "crop": "disabled"},
    },
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "$text(prefix, e2e)"}},
}


def png(width: int, height: int, color: tuple[int, int, int] = (200, 30, 90)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, format="PNG")
    return out.getvalue()


def submit(client: httpx.Client, photo: bytes, **fields: str) -> httpx.Response:
    data = {"name": "end to end", "$prefix": "cat_scaled", "#method": "bilinear", "tags": "gpu", **fields}
    files = {
        "workflow_json": ("workflow.json", json.dumps(WORKFLOW), "application/json"),
        "$photo": ("cat.png", photo, "image/png"),
    }
    return client.post("/v1/workflow", data=data, files=files)


def watch_all(client: httpx.Client, workflow_id: str) -> list[dict[str, Any]]:
    return list(frames(client, f"/v1/workflow/{workflow_id}/subscribe", {"Last-Event-ID": "0"}))


def statuses(stream: list[dict[str, Any]]) -> list[str]:
    seen: list[str] = []
    for f in stream:
        if f["event"] == "status" and (not seen or seen[-1] != f["data"]["status"]):
            seen.append(f["data"]["status"])
    return seen


def test_one_workflow_from_upload_to_stored_output(suite: Suite, double: str, client: httpx.Client) -> None:
    photo = png(40, 30)
    created = submit(client, photo)
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["status"] == "accepted" and body["name"] == "end to end" and body["tags"] == ["gpu"]
    assert body["started_at"] is None and body["completed_at"] is None
    workflow_id = body["id"]

    stream = watch_all(client, workflow_id)
    assert [int(f["id"]) for f in stream] == list(range(1, len(stream) + 1)), "ids are the event seq, no gaps"
    assert statuses(stream) == ["accepted", "uploaded", "queued", "running", "completed"]
    kinds = [f["event"] for f in stream]
    running_at = next(i for i, f in enumerate(stream) if f["event"] == "status" and f["data"]["status"] == "running")
    assert "executing" in kinds[running_at:-1], kinds
    assert {f["data"]["node_id"] for f in stream if f["event"] == "executing"} >= {"2", "3"}
    assert stream[-1]["data"]["status"] == "completed" and stream[-1]["data"]["completed_at"]

    record = client.get(f"/v1/workflow/{workflow_id}").json()
    assert record["status"] == "completed" and record["attempt"] == 1 and record["prompt_id"]
    params = {p: v for p, v in record["workflow_params"]}
    assert params["$text(prefix, e2e)"] == "cat_scaled"
    assert params["$choice(method, nearest-exact, bilinear, area)"] == "bilinear"

    outputs = client.get(f"/v1/workflow/{workflow_id}/outputs")
    assert outputs.status_code == 200, outputs.text
    [output] = outputs.json()
    assert output["workflow_id"] == workflow_id and output["node_id"] == "3"
    assert output["filename"].startswith("cat_scaled_") and output["content_type"] == "image/png"
    download = httpx.get(output["src"], timeout=30)  # the signed URL is the credential: no token
    assert download.status_code == 200
    assert download.content[:8] == b"\x89PNG\r\n\x1a\n" and len(download.content) == output["size"]
    assert Image.open(io.BytesIO(download.content)).size == (64, 48)

    # What ComfyUI received: the substituted prompt and the uploaded input file.
    history = httpx.get(f"{double}/history/{record['prompt_id']}").json()[record["prompt_id"]]
    prompt = history["prompt"][2]
    assert prompt["3"]["inputs"]["filename_prefix"] == "cat_scaled"
    assert prompt["2"]["inputs"]["upscale_method"] == "bilinear"
    subfolder, _, name = prompt["1"]["inputs"]["image"].rpartition("/")
    assert subfolder and "$file" not in name
    uploaded = httpx.get(f"{double}/view", params={"filename": name, "subfolder": subfolder, "type": "input"})
    assert uploaded.status_code == 200 and uploaded.content == photo


def test_subscribe_starts_with_a_snapshot_and_closes_after_the_terminal_state(client: httpx.Client) -> None:
    created = submit(client, png(20, 20))
    assert created.status_code == 201, created.text
    workflow_id = created.json()["id"]
    stream = list(frames(client, f"/v1/workflow/{workflow_id}/subscribe", {}))
    assert stream[0]["event"] == "snapshot"
    snapshot = stream[0]["data"]
    assert set(snapshot) >= {"status", "prompt", "queue_number", "outputs", "cause", "started_at", "completed_at"}
    assert stream[-1]["event"] == "status" and stream[-1]["data"]["status"] == "completed"
    # Resuming after the snapshot's id replays nothing twice.
    resumed = list(frames(client, f"/v1/workflow/{workflow_id}/subscribe", {"Last-Event-ID": stream[0]["id"]}))
    assert [f["id"] for f in resumed] == [f["id"] for f in stream[1:]]


def test_scheduler_killed_after_201_keeps_the_workflow(suite: Suite, client: httpx.Client) -> None:
    created = submit(client, png(30, 30))
    assert created.status_code == 201, created.text
    workflow_id = created.json()["id"]
    suite.kill("scheduler", signal.SIGKILL)
    suite.start("scheduler")
    suite.wait_ready("scheduler")
    # Until the gateway's channel has reconnected it answers 503 + Retry-After, as API.md says
    # for a dependency that is down; a client retries (bounded here to 10 s).
    deadline = time.monotonic() + 10
    record = client.get(f"/v1/workflow/{workflow_id}")
    while record.status_code == 503 and time.monotonic() < deadline:
        assert record.headers["retry-after"] and record.json()["status"] == 503
        time.sleep(0.2)
        record = client.get(f"/v1/workflow/{workflow_id}")
    assert record.status_code == 200 and record.json()["id"] == workflow_id
    stream = watch_all(client, workflow_id)
    assert stream[-1]["data"]["status"] == "completed"
    assert client.get(f"/v1/workflow/{workflow_id}/outputs").status_code == 200


@pytest.mark.parametrize(
    ("fields", "files", "reason_field"),
    [
        ({"name": ""}, None, "name"),
        ({}, {"workflow_json": ("w.json", "{not json", "application/json")}, "workflow_json"),
        ({"$nope": "x"}, None, "$nope"),
        ({"#method": "cubic"}, None, "#method"),
        ({"tags": "gpu,no spaces"}, None, "tags"),
    ],
    ids=["missing-name", "broken-json", "unknown-field", "bad-choice", "bad-tag"],
)
def test_bad_requests_get_400_with_the_error_body(
    client: httpx.Client, fields: dict[str, str], files: dict[str, Any] | None, reason_field: str
) -> None:
    data = {"name": "bad", "$prefix": "p", "#method": "bilinear", **fields}
    if data["name"] == "":
        del data["name"]
    parts = {
        "workflow_json": ("workflow.json", json.dumps(WORKFLOW), "application/json"),
        "$photo": ("cat.png", png(8, 8), "image/png"),
        **(files or {}),
    }
    reply = client.post("/v1/workflow", data=data, files=parts)
    assert reply.status_code == 400, reply.text
    body = reply.json()
    assert body["status"] == 400 and body["reason"] and body["message"]
    assert reason_field in json.dumps(body), body
    # The services keep serving.
    assert client.get("/healthz").status_code == 200
    assert client.get("/v1/workflow", params={"per_page": 1}).status_code == 200


def test_requests_without_a_valid_token_get_401(suite: Suite) -> None:
    for headers in ({}, {"Authorization": "Bearer cf_not_a_token"}):
        reply = httpx.get(f"{suite.gateway_url}/v1/workflow/00000000-0000-0000-0000-000000000000", headers=headers)
        assert reply.status_code == 401
        assert reply.json()["status"] == 401
