"""Retries and errors against a tiny scripted HTTP server (no suite): 503/429 with Retry-After,
the Idempotency-Key of a retried create, the give-up cases, and watch across reconnects
(the SSE frame decoding itself: test_sse.py).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from comfyfleet import AsyncClient, Client
from comfyfleet.errors import RateLimitError, ServiceUnavailableError, TransportError, WatchError
from comfyfleet.models import Output
from comfyfleet.settings import Settings

from services.devrun import free_port

USER = {"id": "u1", "name": "dev", "email": "dev@example.com", "tier": "pro",
        "created_at": "2026-01-02T03:04:05Z", "updated_at": None}
CREATED: dict[str, Any] = {"id": "w1", "name": "x", "status": "accepted", "tags": [],
                           "created_at": "2026-01-02T03:04:05Z", "updated_at": "2026-01-02T03:04:05Z",
                           "started_at": None, "completed_at": None}


@dataclass
class Script:
    """Answers to give, in order (status, headers, body); the last one repeats."""

    answers: list[tuple[int, dict[str, str], Any]]
    seen: list[dict[str, Any]] = field(default_factory=list)

    def next(self) -> tuple[int, dict[str, str], Any]:
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


@pytest.fixture
def scripted() -> Iterator[tuple[str, Script]]:
    script = Script([])

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            script.seen.append({"method": self.command, "path": self.path, "headers": dict(self.headers),
                                "body": body, "at": time.monotonic()})
            status, headers, payload = script.next()
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(status)
            for key, value in {"Content-Type": "application/json", **headers}.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _answer

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", script
    server.shutdown()
    server.server_close()


def error(status: int, reason: str, message: str) -> dict[str, Any]:
    return {"status": status, "reason": reason, "message": message}


def test_a_503_with_retry_after_is_retried_after_that_many_seconds(scripted: tuple[str, Script]) -> None:
    url, script = scripted
    script.answers = [(503, {"Retry-After": "1"}, error(503, "UNAVAILABLE", "scheduler is down")), (200, {}, USER)]
    with Client(url, token="cf_t") as client:
        user = client.user.get()
    assert user.id == "u1" and user.tier == "pro"
    assert len(script.seen) == 2
    assert script.seen[1]["at"] - script.seen[0]["at"] >= 0.95, "waited the Retry-After"
    assert all(s["headers"]["Authorization"] == "Bearer cf_t" for s in script.seen)


def test_a_retried_create_sends_the_same_idempotency_key_and_bytes(scripted: tuple[str, Script]) -> None:
    url, script = scripted
    script.answers = [(429, {"Retry-After": "0"}, error(429, "RATE_LIMITED", "slow down")), (201, {}, CREATED)]
    with Client(url, token="cf_t") as client:
        created = client.workflows.create({"1": {"class_type": "EmptyImage", "inputs": {}}}, name="x",
                                          params={"prefix": "p"}, files={"photo": ("a.png", b"PNGDATA")})
    assert created.id == "w1" and created.status == "accepted"
    first, second = script.seen
    key = first["headers"]["Idempotency-Key"]
    assert len(key) == 36 and second["headers"]["Idempotency-Key"] == key
    assert unbounded(first) == unbounded(second), "the same parts, byte for byte"
    assert b'name="$photo"; filename="a.png"' in second["body"] and b'name="workflow_json"' in second["body"]


def unbounded(request: dict[str, Any]) -> bytes:
    boundary = request["headers"]["Content-Type"].split("boundary=")[1].encode()
    return bytes(request["body"]).replace(boundary, b"B")


def test_a_retry_after_longer_than_allowed_is_raised_at_once(scripted: tuple[str, Script]) -> None:
    url, script = scripted
    script.answers = [(429, {"Retry-After": "3600"}, {**error(429, "RATE_LIMITED", "slow down"), "details": [1]})]
    with Client(url, token="cf_t") as client, pytest.raises(RateLimitError) as raised:
        client.workflows.get("w1")
    assert len(script.seen) == 1
    err = raised.value
    assert (err.status, err.reason, err.message, err.details, err.retry_after) == (
        429, "RATE_LIMITED", "slow down", [1], 3600.0)


def test_retries_are_bounded(scripted: tuple[str, Script]) -> None:
    url, script = scripted
    script.answers = [(503, {"Retry-After": "0"}, error(503, "UNAVAILABLE", "storage is down"))]
    with Client(url, token="cf_t") as client, pytest.raises(ServiceUnavailableError) as raised:
        client.user.get()
    assert len(script.seen) == client.settings.max_retries + 1
    assert raised.value.message == "storage is down"


def test_no_server_is_a_transport_error() -> None:
    with Client(settings=Settings(url=f"http://127.0.0.1:{free_port()}", token="t", max_retries=0)) as client, \
            pytest.raises(TransportError):
        client.user.get()


def sse(*frames: tuple[int, str, dict[str, Any]]) -> bytes:
    return b"retry: 3000\n\n" + b"".join(
        f"id: {seq}\nevent: {kind}\ndata: {json.dumps(data)}\n\n".encode() for seq, kind, data in frames)


STREAM = {"Content-Type": "text/event-stream"}
RUNNING = {"id": "w1", "status": "running", "outputs": []}


def stream_script() -> list[tuple[int, dict[str, str], Any]]:
    """A stream that ends early, a 503, then a replay that overlaps what was already seen."""
    return [
        (200, STREAM, sse((4, "snapshot", RUNNING), (5, "progress", {"node_id": "3", "value": 1, "max": 4}))),
        (503, {"Retry-After": "0"}, error(503, "UNAVAILABLE", "scheduler restarting")),
        (200, STREAM, sse((5, "progress", {"node_id": "3", "value": 1, "max": 4}),
                          (6, "executing", {"node_id": "4", "node_type": "SaveImage"}),
                          (7, "status", {**RUNNING, "status": "completed"}),
                          (8, "log", {"message": "never read: the stream is over"}))),
    ]


def test_watch_resumes_after_an_early_end_and_a_503(scripted: tuple[str, Script]) -> None:
    url, script = scripted
    script.answers = stream_script()
    with Client(url, token="cf_t") as client:
        events = list(client.workflows.watch("w1"))
    assert [(e.seq, e.kind) for e in events] == [(4, "snapshot"), (5, "progress"), (6, "executing"), (7, "status")]
    assert [s["headers"].get("Last-Event-ID") for s in script.seen] == [None, "5", "5"]


async def test_async_watch_resumes_the_same_way(scripted: tuple[str, Script]) -> None:
    url, script = scripted
    script.answers = stream_script()
    async with AsyncClient(url, token="cf_t") as client:
        events = [e async for e in client.workflows.watch("w1")]
    assert [e.seq for e in events] == [4, 5, 6, 7] and events[-1].status == "completed"  # type: ignore[union-attr]
    assert [s["headers"].get("Last-Event-ID") for s in script.seen] == [None, "5", "5"]


def test_watch_gives_up_after_repeated_failures(scripted: tuple[str, Script]) -> None:
    url, script = scripted
    script.answers = [(503, {"Retry-After": "0"}, error(503, "UNAVAILABLE", "down"))]
    with Client(url, token="cf_t") as client, pytest.raises(WatchError):
        list(client.workflows.watch("w1", max_failures=2))
    assert len(script.seen) == 3


def test_an_expired_download_url_is_refreshed_once(scripted: tuple[str, Script], tmp_path: Path) -> None:
    url, script = scripted
    stale = Output(id="o1", workflow_id="w1", src=f"{url}/v1/objects/a.png?signature=old", filename="a.png")
    fresh = {**stale.model_dump(), "src": f"{url}/v1/objects/a.png?signature=new"}
    script.answers = [(403, {}, error(403, "SIGNATURE_EXPIRED", "the link has expired")), (200, {}, [fresh]),
                      (200, {"Content-Type": "image/png"}, b"\x89PNG-bytes")]
    with Client(url, token="cf_t") as client:
        path = client.workflows.download(stale, tmp_path)
    assert path == tmp_path / "a.png" and path.read_bytes() == b"\x89PNG-bytes"
    assert [s["path"] for s in script.seen] == [
        "/v1/objects/a.png?signature=old", "/v1/workflow/w1/outputs", "/v1/objects/a.png?signature=new"]
    assert "Authorization" not in script.seen[0]["headers"], "a signed URL is its own credential"



def finished_stream_script() -> list[tuple[int, dict[str, str], Any]]:
    """A resumed stream that ends at once (nothing after the cursor), then the finished workflow."""
    return [(200, STREAM, b"retry: 3000\n\n"), (200, {}, {**CREATED, "status": "completed"})]


def test_watch_after_the_last_event_of_a_finished_workflow_ends_without_reconnecting(
        scripted: tuple[str, Script]) -> None:
    url, script = scripted
    script.answers = finished_stream_script()
    with Client(url, token="cf_t") as client:
        assert list(client.workflows.watch("w1", after=7)) == []
    assert [s["path"] for s in script.seen] == ["/v1/workflow/w1/subscribe", "/v1/workflow/w1"]


async def test_async_watch_after_the_last_event_of_a_finished_workflow_ends_the_same_way(
        scripted: tuple[str, Script]) -> None:
    url, script = scripted
    script.answers = finished_stream_script()
    async with AsyncClient(url, token="cf_t") as client:
        assert [e async for e in client.workflows.watch("w1", after=7)] == []
    assert [s["path"] for s in script.seen] == ["/v1/workflow/w1/subscribe", "/v1/workflow/w1"]
