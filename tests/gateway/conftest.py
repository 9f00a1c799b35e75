"""The gateway under test: the real app on uvicorn (port 0) in front of in-memory gRPC fakes.

One stack serves the whole folder (its fakes are reset before each test) because starting
and stopping uvicorn costs about 0.2 s; tests that need other settings, or that stop a
dependency, start their own with `make_stack`. Every async test here runs in the package's
event loop so it can use the shared stack.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import pytest_asyncio
import uvicorn

from services.gateway.app import create_app
from services.gateway.config import GatewaySettings
from tests.gateway.fakes import GOOD_TOKEN, FakeScheduler, FakeStorage, add_scheduler, add_storage, serve

AUTH = {"Authorization": f"Bearer {GOOD_TOKEN}"}


@dataclass
class Stack:
    """A running gateway and the fakes behind it."""

    scheduler: FakeScheduler
    storage: FakeStorage
    storage_server: grpc.aio.Server
    settings: GatewaySettings
    base_url: str
    client: httpx.AsyncClient


@asynccontextmanager
async def running_stack(scheduler: FakeScheduler | None = None, **overrides: Any) -> AsyncIterator[Stack]:
    scheduler, storage = scheduler or FakeScheduler(), FakeStorage()
    scheduler_server, scheduler_port = await serve(add_scheduler(scheduler))
    storage_server, storage_port = await serve(add_storage(storage))
    settings = dataclasses.replace(
        GatewaySettings(port=0, sse_keepalive_seconds=5.0, rate_limit_requests=0),
        scheduler_address=f"127.0.0.1:{scheduler_port}",
        storage_address=f"127.0.0.1:{storage_port}",
        **overrides,
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        create_app(settings), lifespan="on", ws="none", log_level="warning", access_log=False,
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        assert not task.done(), "uvicorn did not start"
        await asyncio.sleep(0.005)
    base_url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
            yield Stack(scheduler, storage, storage_server, settings, base_url, client)
    finally:
        server.should_exit = True
        await task
        sock.close()
        await scheduler_server.stop(None)
        await storage_server.stop(None)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if pytest_asyncio.is_async_test(item) and here in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.asyncio(loop_scope="package"), append=False)


@pytest_asyncio.fixture(scope="package", loop_scope="package")
async def shared_stack() -> AsyncIterator[Stack]:
    async with running_stack() as running:
        yield running


@pytest_asyncio.fixture(loop_scope="package")
async def stack(shared_stack: Stack) -> Stack:
    shared_stack.scheduler.reset()
    shared_stack.storage.reset()
    return shared_stack


@pytest.fixture
def make_stack() -> Callable[..., AbstractAsyncContextManager[Stack]]:
    """For tests that need other settings: `async with make_stack(max_request_bytes=...) as s:`."""
    return running_stack


@pytest.fixture(autouse=True)
def _quiet_parser_logs() -> None:
    # python-multipart logs a warning for every malformed body it sees; the tests make many.
    logging.getLogger("python_multipart").setLevel(logging.ERROR)
