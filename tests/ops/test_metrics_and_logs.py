"""After one workflow: every service's /metrics has its families with values that follow from
the run, and the scheduler's JSON log lines carry the request id the gateway used."""

from __future__ import annotations

import io
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from services.devrun import Suite
from tests.integration.sse import frames

WORKFLOW = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "$file(photo)"}},
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "ops"}},
}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 24), (10, 200, 90)).save(out, format="PNG")
    return out.getvalue()


def scrape(url: str) -> tuple[set[str], Samples]:
    """The family names and every sample (name, labels) -> value of a /metrics page."""
    reply = httpx.get(url, timeout=10)
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("text/plain")
    names: set[str] = set()
    samples: Samples = {}
    for family in text_string_to_metric_families(reply.text):
        names.add(family.name)
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return names, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples called `name` whose labels include `labels` (0 when none)."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def json_lines(path: Any) -> list[dict[str, Any]]:
    lines = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


@pytest.fixture(scope="module")
def client(suite: Suite) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=suite.gateway_url, headers={"Authorization": f"Bearer {suite.token}"},
                      timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def run(suite: Suite, client: httpx.Client) -> dict[str, str]:
    """One workflow, created with a request id of ours, watched until it completed."""
    request_id = f"ops-{uuid.uuid4().hex}"
    created = client.post(
        "/v1/workflow",
        headers={"X-Request-ID": request_id},
        data={"name": "ops", "tags": "gpu"},
        files={"workflow_json": ("w.json", json.dumps(WORKFLOW), "application/json"),
               "$photo": ("in.png", png(), "image/png")},
    )
    assert created.status_code == 201, created.text
    assert created.headers["x-request-id"] == request_id
    workflow_id = created.json()["id"]
    stream = list(frames(client, f"/v1/workflow/{workflow_id}/subscribe",
                         {"Last-Event-ID": "0", "X-Request-ID": f"{request_id}-sse"}))
    assert stream[-1]["data"]["status"] == "completed", stream[-1]
    missing = client.get("/v1/workflow/no-such-workflow")
    assert missing.status_code == 404
    return {"request_id": request_id, "workflow_id": workflow_id, "generated_id": missing.headers["x-request-id"]}


def metrics_url(suite: Suite, name: str) -> str:
    assert suite.metrics_ports is not None
    return f"http://127.0.0.1:{suite.metrics_ports[name]}/metrics"


def test_scheduler_metrics(suite: Suite, run: dict[str, str]) -> None:
    names, samples = scrape(metrics_url(suite, "scheduler"))
    assert {"comfyfleet_workflows", "comfyfleet_queue_depth", "comfyfleet_runners", "comfyfleet_runner_slots",
            "comfyfleet_placement_seconds", "comfyfleet_events", "comfyfleet_grpc_server_handling_seconds"} <= names
    assert value(samples, "comfyfleet_workflows", state="completed") >= 1
    assert value(samples, "comfyfleet_workflows", state="running") == 0
    assert value(samples, "comfyfleet_queue_depth", priority="normal") == 0  # nothing is left waiting
    assert {ls for (n, ls) in samples if n == "comfyfleet_queue_depth"} == {
        frozenset({("priority", p)}) for p in ("low", "normal", "high")}
    assert value(samples, "comfyfleet_runners", state="connected") == 1
    assert value(samples, "comfyfleet_runners", state="registered") >= 1
    assert value(samples, "comfyfleet_runners", state="draining") == 0
    assert value(samples, "comfyfleet_runner_slots", kind="total") == 1
    assert value(samples, "comfyfleet_placement_seconds_count") >= 1
    # The suite's database is a SQLite file: its checkpoint gauges are there (few writes so far).
    assert value(samples, "comfyfleet_sqlite_checkpoint_waits") == 0
    assert value(samples, "comfyfleet_sqlite_wal_frames") >= 0
    # accepted, uploaded, queued, running, completed: five status events at least
    assert value(samples, "comfyfleet_events_total", kind="status") >= 5
    grpc = "comfyfleet_grpc_server_handling_seconds_count"
    assert value(samples, grpc, grpc_method="CreateWorkflow", grpc_code="OK") >= 1
    assert value(samples, grpc, grpc_method="GetWorkflow", grpc_code="NOT_FOUND") >= 1
    assert value(samples, "comfyfleet_grpc_server_handling_seconds_bucket", grpc_method="CreateWorkflow",
                 grpc_code="OK", le="+Inf") >= 1


def test_storage_metrics(suite: Suite, run: dict[str, str]) -> None:
    names, samples = scrape(metrics_url(suite, "storage"))
    assert {"comfyfleet_storage_upload_bytes", "comfyfleet_storage_errors",
            "comfyfleet_grpc_server_handling_seconds"} <= names
    assert value(samples, "comfyfleet_storage_upload_bytes_total") > 100  # the input PNG and the output
    assert value(samples, "comfyfleet_storage_download_bytes_total") > 0  # the runner read the input
    # the input PNG came as a stream (from the gateway), the small output as an item of the runner's
    # held PutObjectsBytes stream, timed on its own (the stream itself is counted when it ends)
    assert value(samples, "comfyfleet_grpc_server_handling_seconds_count", grpc_method="PutObject",
                 grpc_code="OK") >= 1
    assert value(samples, "comfyfleet_grpc_server_handling_seconds_count", grpc_method="PutObjectsBytes.item",
                 grpc_code="OK") >= 1


def test_runner_metrics(suite: Suite, run: dict[str, str]) -> None:
    names, samples = scrape(metrics_url(suite, "runner"))
    assert value(samples, "comfyfleet_runner_scheduler_connected", runner="local-runner") == 1
    assert value(samples, "comfyfleet_runner_comfyui_connected", runner="local-runner") == 1
    assert value(samples, "comfyfleet_runner_slots", runner="local-runner") == 1
    assert value(samples, "comfyfleet_runner_in_flight", runner="local-runner") == 0
    assert "comfyfleet_runner_draining" in names


def test_gateway_metrics(suite: Suite, run: dict[str, str]) -> None:
    names, samples = scrape(f"{suite.gateway_url}/metrics")
    assert {"comfyfleet_http_requests", "comfyfleet_sse_subscribers", "comfyfleet_sse_watches"} <= names
    assert value(samples, "comfyfleet_http_requests_total", method="POST", route="/v1/workflow", status="201") >= 1
    assert value(samples, "comfyfleet_http_requests_total", route="/v1/workflow/{id}/subscribe", status="200") >= 1
    assert value(samples, "comfyfleet_sse_subscribers") == 0  # the stream ended with the workflow


def test_request_id_crosses_from_gateway_to_scheduler_logs(suite: Suite, run: dict[str, str]) -> None:
    request_id = run["request_id"]
    gateway = [line for line in json_lines(suite.var_dir / "gateway.log") if line.get("request_id") == request_id]
    assert any(line["message"].startswith("POST /v1/workflow 201") for line in gateway), gateway
    deadline = time.monotonic() + 5
    while True:  # the scheduler writes its line when the call ends; give the pipe a moment
        scheduler = [line for line in json_lines(suite.var_dir / "scheduler.log")
                     if line.get("request_id") == request_id]
        created = [line for line in scheduler if "CreateWorkflow OK" in line["message"]]
        if created or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert created, scheduler
    assert created[0]["workflow_id"] == run["workflow_id"]
    assert created[0]["logger"] == "services.grpc" and created[0]["level"] == "INFO"


def test_an_sse_streams_access_line_carries_its_request_id(suite: Suite, run: dict[str, str]) -> None:
    """SSE routes are answered before the middleware (app.py) and write their own access line."""
    lines = [line for line in json_lines(suite.var_dir / "gateway.log")
             if line.get("request_id") == f"{run['request_id']}-sse"]
    assert any(line["message"].startswith(f"GET /v1/workflow/{run['workflow_id']}/subscribe 200")
               and line["logger"] == "services.gateway.access" for line in lines), lines


def test_gateway_generates_a_request_id_when_the_client_sends_none(suite: Suite, run: dict[str, str]) -> None:
    generated = run["generated_id"]
    assert len(generated) == 32
    scheduler = [line for line in json_lines(suite.var_dir / "scheduler.log") if line.get("request_id") == generated]
    assert any("GetWorkflow NOT_FOUND" in line["message"] for line in scheduler), scheduler
