"""What every hostile case checks: the exact status and error body, then that the services
still answer (the gateway's liveness, and the scheduler and storage through an authenticated
read and the readiness probe)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx

from tests.api.conftest import Api

PLAIN = {"1": {"class_type": "SaveImage", "inputs": {"filename_prefix": "$text(prefix, out)"}}}
BOUNDARY = "hostileboundary"


def part(name: str, value: bytes | str, *, filename: str | None = None, content_type: str | None = None) -> bytes:
    """One multipart part, built by hand so that anything can be put in it."""
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
    head = f"Content-Disposition: {disposition}\r\n" + (f"Content-Type: {content_type}\r\n" if content_type else "")
    data = value.encode() if isinstance(value, str) else value
    return f"--{BOUNDARY}\r\n".encode("utf-8", "surrogateescape") + head.encode("utf-8", "surrogateescape") \
        + b"\r\n" + data + b"\r\n"


def body(*parts: bytes, close: bool = True) -> bytes:
    return b"".join(parts) + (f"--{BOUNDARY}--\r\n".encode() if close else b"")


def workflow_part(graph: Any = PLAIN) -> bytes:
    text = graph if isinstance(graph, (str, bytes)) else json.dumps(graph)
    return part("workflow_json", text, filename="wf.json", content_type="application/json")


MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"


async def still_answers(api: Api, auth: dict[str, str], client: httpx.AsyncClient | None = None) -> None:
    client = client or api.client
    live, user, ready = await asyncio.gather(
        client.get("/healthz"),
        client.get("/v1/user", headers=auth),  # the scheduler answers, with its database
        client.get("/readyz"),  # scheduler and storage are serving
    )
    assert (live.status_code, user.status_code, ready.status_code) == (200, 200, 200), (live, user.text, ready.text)


def assert_error(reply: httpx.Response, status: int, reason: str, *words: str) -> dict[str, Any]:
    """The API.md error body with this status and reason; its message has each of `words`."""
    assert reply.status_code == status, (reply.status_code, reply.text[:600])
    error: dict[str, Any] = reply.json()
    assert error["status"] == status, error
    assert error["reason"] == reason, error
    assert set(error) <= {"status", "message", "reason", "details"}, error
    for word in words:
        assert word in error["message"], (word, error)
    return error


async def expect(api: Api, reply: httpx.Response, auth: dict[str, str], status: int, reason: str, *words: str,
                 client: httpx.AsyncClient | None = None) -> dict[str, Any]:
    error = assert_error(reply, status, reason, *words)
    await still_answers(api, auth, client)
    return error
