"""The suite on the s3 backend: processes on loopback, SeaweedFS as the S3 server.

Checks what users (and whoever looks in the bucket) see: outputs downloadable from the
presigned URL and refused once tampered with, inputs gone after completion, nothing left in the
bucket after a create that failed halfway, and 503 + Retry-After while storage is down.
"""

from __future__ import annotations

import io
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from services.devrun import Suite, free_port
from tests.integration.sse import frames
from tests.storage.seaweed import SeaweedS3

pytestmark = pytest.mark.timeout(120)
BUCKET = "comfyfleet-it"
WORKFLOW = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "$file(photo)"}},
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "s3_inverted"}},
}


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    server = SeaweedS3(tmp_path_factory.mktemp("seaweed-it"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def s3_suite(tmp_path_factory: pytest.TempPathFactory, double: str, seaweed: SeaweedS3) -> Iterator[Suite]:
    var: Path = tmp_path_factory.mktemp("var-s3")
    suite = Suite(
        var_dir=var, scheduler_port=free_port(), storage_port=free_port(), gateway_port=free_port(),
        comfyui_url=double, runner_tags="gpu",
        extra_env={**seaweed.env(BUCKET), "SCHEDULER_LEASE_SECONDS": "3", "SCHEDULER_HEARTBEAT_SECONDS": "0.5"},
    )
    try:
        suite.up()
        yield suite
    finally:
        suite.down()


@pytest.fixture
def client(s3_suite: Suite) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=s3_suite.gateway_url, headers={"Authorization": f"Bearer {s3_suite.token}"},
                      timeout=30) as c:
        yield c


def png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 30)).save(out, format="PNG")
    return out.getvalue()


def submit(client: httpx.Client, photo: bytes, **fields: str) -> httpx.Response:
    files: dict[str, tuple[str, str | bytes, str]] = {
        "workflow_json": ("workflow.json", json.dumps(WORKFLOW), "application/json"),
        "$photo": ("photo.png", photo, "image/png"),
    }
    return client.post("/v1/workflow", data={"name": "on s3", "tags": "gpu", **fields}, files=files)


def eventually(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def workflow_count(client: httpx.Client) -> int:
    return int(client.get("/v1/workflow", params={"per_page": 1}).json()["total"])


def test_a_workflow_completes_with_its_output_in_the_bucket_and_its_inputs_gone(
    client: httpx.Client, seaweed: SeaweedS3
) -> None:
    created = submit(client, png(32, 24))
    assert created.status_code == 201, created.text
    workflow_id = created.json()["id"]
    stream = list(frames(client, f"/v1/workflow/{workflow_id}/subscribe", {"Last-Event-ID": "0"}))
    assert stream[-1]["data"]["status"] == "completed", stream[-1]

    [output] = client.get(f"/v1/workflow/{workflow_id}/outputs").json()
    assert output["src"].startswith(f"http://{seaweed.endpoint}/{BUCKET}/outputs/{workflow_id}/")
    download = httpx.get(output["src"], timeout=30)  # the presigned URL is the credential
    assert download.status_code == 200 and len(download.content) == output["size"]
    inverted = Image.open(io.BytesIO(download.content)).convert("RGB")
    assert inverted.size == (32, 24)
    pixel = inverted.getpixel((0, 0))  # (10, 200, 30) inverted, within ComfyUI's float rounding
    assert isinstance(pixel, tuple)
    assert all(abs(got - want) <= 1 for got, want in zip(pixel, (245, 55, 225), strict=True)), pixel

    signature = output["src"].split("X-Amz-Signature=")[1][:64]
    tampered = output["src"].replace(signature, ("0" if signature[0] != "0" else "1") + signature[1:])
    assert httpx.get(tampered, timeout=30).status_code == 403

    assert seaweed.keys(BUCKET, f"outputs/{workflow_id}/") == [f"outputs/{workflow_id}/3/{output['filename']}"]


def test_inputs_are_gone_after_completion(client: httpx.Client, seaweed: SeaweedS3) -> None:
    created = submit(client, png(8, 8))
    assert created.status_code == 201, created.text
    workflow_id = created.json()["id"]
    assert seaweed.keys(BUCKET, f"inputs/{workflow_id}/"), "the input was stored"
    stream = list(frames(client, f"/v1/workflow/{workflow_id}/subscribe", {"Last-Event-ID": "0"}))
    assert stream[-1]["data"]["status"] == "completed"
    eventually(lambda: seaweed.keys(BUCKET, f"inputs/{workflow_id}/") == [], timeout=5)


def test_a_create_the_scheduler_refuses_after_the_upload_leaves_no_inputs(
    client: httpx.Client, seaweed: SeaweedS3
) -> None:
    before, kept = workflow_count(client), seaweed.keys(BUCKET, "inputs/")  # earlier workflows' inputs
    # the scheduler is asked only after the file was stored: its 400 names the tag
    refused = submit(client, png(16, 16), tags="no-runner-has-this")
    assert refused.status_code == 400, refused.text
    assert "no-runner-has-this" in refused.json()["message"]
    assert workflow_count(client) == before
    eventually(lambda: seaweed.keys(BUCKET, "inputs/") == kept)


def test_an_upload_over_the_limit_gets_413_and_leaves_no_inputs(client: httpx.Client, seaweed: SeaweedS3) -> None:
    before, kept = workflow_count(client), seaweed.keys(BUCKET, "inputs/")
    refused = submit(client, b"\0" * (51 * 1024 * 1024))
    assert refused.status_code == 413, refused.text
    assert refused.json()["status"] == 413
    assert workflow_count(client) == before
    eventually(lambda: seaweed.keys(BUCKET, "inputs/") == kept)
    assert seaweed.pending_uploads(BUCKET) == 0


def test_storage_down_gives_503_with_retry_after_and_creates_work_again_once_it_is_back(
    s3_suite: Suite, client: httpx.Client, seaweed: SeaweedS3
) -> None:
    before = workflow_count(client)
    s3_suite.kill("storage", signal.SIGTERM)
    try:
        refused = submit(client, png(16, 16))
        assert refused.status_code == 503, refused.text
        assert refused.headers["Retry-After"].isdigit()
        assert refused.json()["status"] == 503 and refused.json()["reason"]
        assert workflow_count(client) == before  # no workflow row was written
    finally:
        s3_suite.start("storage")
        s3_suite.wait_ready("storage")

    deadline = time.monotonic() + 20
    while True:  # the gateway reconnects by itself; a 503 or two while it does is fine
        created = submit(client, png(16, 16))
        if created.status_code != 503 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert created.status_code == 201, created.text
    assert workflow_count(client) == before + 1
    stream = list(frames(client, f"/v1/workflow/{created.json()['id']}/subscribe", {"Last-Event-ID": "0"}))
    assert stream[-1]["data"]["status"] == "completed"
