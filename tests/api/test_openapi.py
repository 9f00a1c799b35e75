"""/openapi.json (generated from the contracts), /metrics, and a bounded schemathesis run
against the live gateway: no 5xx, and every response matches the schema."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from tests.api.conftest import Api

EXPECTED_OPERATIONS = {
    ("post", "/v1/workflow"), ("get", "/v1/workflow"), ("get", "/v1/workflow/{id}"),
    ("delete", "/v1/workflow/{id}"), ("post", "/v1/workflow/{id}/cancel"), ("post", "/v1/workflow/{id}/rerun"),
    ("get", "/v1/workflow/{id}/subscribe"), ("get", "/v1/workflow/{id}/outputs"), ("get", "/v1/events"),
    ("post", "/v1/runner"), ("get", "/v1/runner"), ("get", "/v1/runner/{id}"), ("put", "/v1/runner/{id}"),
    ("delete", "/v1/runner/{id}"), ("post", "/v1/runner/{id}/interrupt"), ("post", "/v1/runner-token"),
    ("post", "/v1/template"), ("get", "/v1/template"), ("get", "/v1/template/{id}"), ("put", "/v1/template/{id}"),
    ("delete", "/v1/template/{id}"), ("post", "/v1/template/{id}/run"), ("get", "/v1/user"),
    ("post", "/v1/webhook"), ("get", "/v1/webhook"), ("get", "/v1/webhook/{id}"), ("put", "/v1/webhook/{id}"),
    ("delete", "/v1/webhook/{id}"),
    ("get", "/v1/webhook/{id}/deliveries"), ("post", "/v1/webhook/{id}/deliveries/{delivery_id}/redeliver"),
    ("get", "/v1/webhook-secret"), ("get", "/v1/workflow/{id}/webhook-deliveries"),
    ("get", "/healthz"), ("get", "/readyz"), ("get", "/metrics"), ("get", "/openapi.json"),
}


async def test_openapi_describes_every_endpoint_from_the_contracts(api: Api) -> None:
    reply = await api.client.get("/openapi.json")
    assert reply.status_code == 200
    doc = reply.json()
    assert doc["openapi"] == "3.1.0"
    assert {(m, p) for p, ops in doc["paths"].items() for m in ops} == EXPECTED_OPERATIONS
    create = doc["paths"]["/v1/runner"]["post"]
    assert create["operationId"] == "CreateRunner" and "201" in create["responses"]
    body = create["requestBody"]["content"]["application/json"]["schema"]
    assert set(body["properties"]) == {"name", "endpoint", "headers", "tags"}
    update = doc["paths"]["/v1/runner/{id}"]["put"]["requestBody"]["content"]["application/json"]["schema"]
    assert set(update["properties"]) == {"name", "endpoint", "headers", "tags", "status"}
    assert update["properties"]["status"] == {"type": "string", "enum": ["active", "disabled"]}
    listing = {p["name"]: p for p in doc["paths"]["/v1/workflow"]["get"]["parameters"]}
    assert listing["status"]["schema"]["enum"][:2] == ["accepted", "uploaded"]
    form = doc["paths"]["/v1/workflow"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["required"] == ["name", "workflow_json"]
    assert doc["paths"]["/v1/workflow/{id}"]["delete"]["responses"]["204"]
    assert doc["components"]["schemas"]["Error"]["required"] == ["status", "message", "reason"]


async def test_metrics_count_requests_by_route(api: Api) -> None:
    auth = await api.user("metered")
    await api.client.get("/v1/workflow/00000000-0000-4000-8000-000000000000", headers=auth)
    reply = await api.client.get("/metrics")
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/plain")
    lines = reply.text.splitlines()
    assert any(line.startswith('comfyfleet_http_requests_total{method="GET",route="/v1/workflow/{id}",status="404"}')
               for line in lines)
    assert any(line.startswith("comfyfleet_http_request_seconds_bucket") for line in lines)


async def test_schemathesis_finds_no_server_error_and_no_schema_violation(api: Api, tmp_path: Path) -> None:
    auth = await api.user("fuzzer")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "schemathesis.cli", "run", f"{api.base_url}/openapi.json",
        "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
                    "response_schema_conformance",
        "--phases", "examples,fuzzing,stateful", "--max-examples", "6", "--seed", "7", "--request-timeout", "10",
        "--workers", "1", "-H", f"Authorization: {auth['Authorization']}", "--no-color",
        "--generation-database", "none",
        cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(), 90)
    except TimeoutError:
        process.kill()
        raise
    text = out.decode(errors="replace")
    assert process.returncode == 0, text[-6000:]
