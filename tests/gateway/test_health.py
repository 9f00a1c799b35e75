"""Probes, and the error body for unexpected failures."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import pytest

from services.gateway import presenters
from tests.gateway.conftest import AUTH, Stack
from tests.gateway.fakes import make_workflow


async def test_healthz(stack: Stack) -> None:
    reply = await stack.client.get("/healthz")
    assert reply.status_code == 200 and reply.json() == {"status": "ok"}


async def test_readyz_when_both_dependencies_serve(stack: Stack) -> None:
    reply = await stack.client.get("/readyz")
    assert reply.status_code == 200 and reply.json() == {"status": "ok"}


async def test_readyz_is_503_when_storage_is_down(
    make_stack: Callable[..., AbstractAsyncContextManager[Stack]],
) -> None:
    async with make_stack() as stack:
        await stack.storage_server.stop(None)
        reply = await stack.client.get("/readyz")
        assert reply.status_code == 503
        assert reply.headers["retry-after"] == "5"
        assert reply.json() == {"status": 503, "message": "not ready: storage unavailable", "reason": "NOT_READY",
                                "details": [{"dependency": "storage"}]}
        assert (await stack.client.get("/healthz")).status_code == 200


async def test_an_unexpected_exception_is_a_logged_500_with_the_error_body(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: object) -> object:
        raise RuntimeError("presenter bug")

    monkeypatch.setattr(presenters, "workflow_record", broken)
    stack.scheduler.workflows["w"] = make_workflow("w")
    reply = await stack.client.get("/v1/workflow/w", headers=AUTH)
    assert reply.status_code == 500
    assert reply.json() == {"status": 500, "message": "internal error", "reason": "INTERNAL"}
    logged = [r for r in caplog.records if r.name == "services.gateway.errors" and r.exc_info]
    assert logged and "presenter bug" in str(logged[0].exc_info[1])  # type: ignore[index]
