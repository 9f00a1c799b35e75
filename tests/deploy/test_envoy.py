"""The Envoy edge: its config validates with the real Envoy, and the replies Envoy makes itself
(body too large, rate limited, no route, upstream down) have API.md's error body.

The public API through Envoy is tested by tests/integration (the `envoy` parameter of its
`suite` fixture); here nothing runs behind the edge, so every forwarded request finds its
upstream down.
"""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from deploy.envoy.render import EdgeSettings, placeholders, render, template_placeholders
from services.devrun import free_port
from tests.deploy.edge import Edge, loopback_edge, validate

TOKENS = 6


def test_the_rendered_config_passes_envoy_validate(tmp_path: Path) -> None:
    config = tmp_path / "envoy.yaml"
    config.write_text(render(EdgeSettings(gateway="gateway.comfyfleet:8080", scheduler="scheduler.comfyfleet:50051")))
    result = validate(config)
    assert result.returncode == 0, result.stdout + result.stderr


def test_envoy_validate_rejects_a_broken_config(tmp_path: Path) -> None:
    config = tmp_path / "envoy.yaml"
    config.write_text(render(EdgeSettings()).replace("timeout: 300s }", "timeout: 300s, timout: 1s }", 1))
    result = validate(config)
    assert result.returncode != 0
    assert "timout" in result.stdout + result.stderr


def test_every_placeholder_of_the_template_has_a_value() -> None:
    assert template_placeholders() == set(placeholders(EdgeSettings()))


def routes() -> dict[str, dict[str, Any]]:
    config = yaml.safe_load(render(EdgeSettings()))
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    return {r["name"]: r for r in hcm["route_config"]["virtual_hosts"][0]["routes"]}


def test_streams_have_no_route_timeout_and_go_where_they_belong() -> None:
    r = routes()
    # Envoy's default route timeout (15 s) would cut SSE streams and runner sessions.
    for name, cluster in (("runner-sessions", "scheduler"), ("sse-subscribe", "gateway"), ("sse-events", "gateway"),
                          ("object-downloads", "gateway")):
        assert r[name]["route"] == {"cluster": cluster, "timeout": "0s"}, name
    assert r["runner-sessions"]["match"]["grpc"] == {}
    # Multipart uploads are never sent anywhere but the gateway, and the body limit comes first.
    names = list(r)
    assert names.index("body-too-large") < names.index("multipart-create")
    assert r["multipart-create"]["route"]["cluster"] == "gateway"
    assert r["body-too-large"]["match"]["headers"][0]["range_match"]["start"] == 50 * 1024 * 1024 + 1


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    e = loopback_edge(tmp_path_factory.mktemp("edge"), gateway_port=free_port(), scheduler_port=free_port(),
                      max_body_bytes=1024, rate_limit_tokens=TOKENS, rate_limit_fill_seconds=3600)
    e.start()
    try:
        yield e
    finally:
        e.stop()


def assert_api_error(reply: httpx.Response, status: int, reason: str) -> None:
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"].startswith("application/json")
    body = reply.json()
    assert body["status"] == status and body["reason"] == reason and body["message"], body
    assert set(body) <= {"status", "message", "reason", "details"}


def test_replies_made_by_envoy_have_the_api_error_body(edge: Edge) -> None:
    """One test, in order, because all requests share the edge's token bucket of TOKENS."""
    with httpx.Client(base_url=edge.url, timeout=10) as client:
        # The gateway is down: 503 with Retry-After, not Envoy's text.
        down = client.get("/v1/user", headers={"Authorization": "Bearer x"})
        assert_api_error(down, 503, "UNAVAILABLE")
        assert down.headers["retry-after"]
        # A declared body over the edge's limit is refused before it is forwarded.
        too_large = client.post("/v1/workflow", content=b"x" * 2048, headers={"content-type": "multipart/form-data"})
        assert_api_error(too_large, 413, "TOO_LARGE")
        # Internal gRPC services are not reachable through the edge.
        storage = client.post("/comfyfleet.storage.v1.StorageService/GetObject",
                              headers={"content-type": "application/grpc"}, content=b"")
        assert storage.headers.get("grpc-status") == "12" or storage.status_code == 404, storage.headers
        # The token bucket is empty after TOKENS requests: 429 with Retry-After.
        replies = [client.get("/healthz") for _ in range(TOKENS)]
        limited = [r for r in replies if r.status_code == 429]
        assert limited, [r.status_code for r in replies]
        assert_api_error(limited[0], 429, "RATE_LIMITED")
        assert limited[0].headers["retry-after"] == "3600"


class _SlowEvents(http.server.BaseHTTPRequestHandler):
    """A stand-in gateway: one SSE frame a second for longer than Envoy's default route timeout."""

    protocol_version = "HTTP/1.1"
    frames = 17

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        for i in range(self.frames):
            chunk = f"id: {i + 1}\nevent: tick\ndata: {{}}\n\n".encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.flush()
            time.sleep(1.0)
        self.wfile.write(b"0\r\n\r\n")

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.timeout(60)
def test_an_sse_stream_outlives_envoys_default_route_timeout(tmp_path: Path) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SlowEvents)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    edge = loopback_edge(tmp_path, gateway_port=server.server_address[1], scheduler_port=free_port())
    edge.start()
    try:
        started = time.monotonic()
        with httpx.Client(base_url=edge.url, timeout=30) as client, \
                client.stream("GET", "/v1/workflow/w/subscribe") as reply:
            assert reply.status_code == 200
            ids = [line for line in reply.iter_lines() if line.startswith("id:")]
        assert ids[-1] == f"id: {_SlowEvents.frames}" and len(ids) == _SlowEvents.frames
        assert time.monotonic() - started > 15, "the stream must outlive Envoy's default 15 s route timeout"
    finally:
        edge.stop()
        server.shutdown()
        server.server_close()
