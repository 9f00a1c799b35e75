"""The public API under test: the real gateway app (uvicorn, port 0) in front of the real
scheduler (`SchedulerApp`, the wiring `python -m services.scheduler` serves) and the real
storage service (local backend in a temporary directory), all in this process.

One stack serves the whole folder (starting it costs ~0.5 s); each test makes its own users,
so tests do not see each other's data. Runners are `FakeRunner`s from the scheduler's test
harness: they speak the session protocol and send the events a test tells them to.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import pytest_asyncio
import uvicorn
from comfyfleet.storage.v1 import object_pb2, storage_service_pb2, storage_service_pb2_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.common.grpc_server import SERVER_OPTIONS
from services.gateway.app import create_app
from services.gateway.config import GatewaySettings
from services.scheduler.config import Settings
from services.scheduler.db.identity_store import API
from services.scheduler.server import SchedulerApp
from services.storage.local_backend import LocalBackend
from services.storage.server import register as register_storage
from services.storage.servicer import StorageServicer
from tests.scheduler.harness import FakeRunner


@dataclass
class Api:
    """The running stack, and a way to make users and runners."""

    scheduler: SchedulerApp
    scheduler_address: str
    objects_dir: Path
    base_url: str
    client: httpx.AsyncClient
    runner_token: str
    gateway_settings: GatewaySettings

    async def put_object(self, key: str, data: bytes, content_type: str = "image/png") -> object_pb2.ObjectRef:
        """Stores an object as a runner would (PutObject: header, chunk, finish)."""
        async def requests() -> AsyncIterator[storage_service_pb2.PutObjectRequest]:
            yield storage_service_pb2.PutObjectRequest(
                header=storage_service_pb2.PutObjectHeader(key=key, content_type=content_type))
            yield storage_service_pb2.PutObjectRequest(chunk=data)
            yield storage_service_pb2.PutObjectRequest(finish=storage_service_pb2.PutObjectFinish(size_bytes=len(data)))

        async with grpc.aio.insecure_channel(self.gateway_settings.storage_address) as channel:
            reply = await storage_service_pb2_grpc.StorageServiceStub(channel).PutObject(requests())
        return reply.object

    def gateway(self, **overrides: Any) -> AbstractAsyncContextManager[httpx.AsyncClient]:
        """Another gateway in front of the same services, with other settings."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        return serve_gateway(dataclasses.replace(self.gateway_settings, **overrides), sock)

    async def user(self, name: str, *, tier: str = "enterprise") -> dict[str, str]:
        """A new user; returns the Authorization header of a fresh API token."""
        row = await self.scheduler.identity.create_user(name, tier=tier)
        token = await self.scheduler.identity.issue_token(row.id, API)
        return {"Authorization": f"Bearer {token}"}

    async def runner_for(self, auth: dict[str, str], name: str, *tags: str) -> FakeRunner:
        """A connected fake runner agent owned by the user of `auth`."""
        user = await self.scheduler.identity.authenticate(auth["Authorization"].split()[1], API)
        token = await self.scheduler.identity.issue_token(user.id, "runner")
        runner = FakeRunner(self.scheduler_address, token, name, tags, 1, ())
        await runner.connect()
        return runner


@asynccontextmanager
async def serve_gateway(settings: GatewaySettings, sock: socket.socket) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway app on uvicorn on `sock`, and a client for it; stopped on exit."""
    server = uvicorn.Server(uvicorn.Config(create_app(settings), lifespan="on", ws="none",
                                           log_level="warning", access_log=False, timeout_graceful_shutdown=1))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        assert not task.done(), "uvicorn did not start"
        await asyncio.sleep(0.005)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{sock.getsockname()[1]}", timeout=10) as client:
            yield client
    finally:
        server.should_exit = True
        await task
        sock.close()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if pytest_asyncio.is_async_test(item) and here in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.asyncio(loop_scope="package"), append=False)


async def _grpc_server(register: object) -> tuple[grpc.aio.Server, int]:
    """A server on port 0 with the services and, as `serve` adds it, the health service."""
    server = grpc.aio.server(options=SERVER_OPTIONS)
    register(server)  # type: ignore[operator]
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    return server, port


@pytest_asyncio.fixture(scope="package", loop_scope="package")
async def api(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Api]:
    logging.getLogger("python_multipart").setLevel(logging.ERROR)
    tmp = tmp_path_factory.mktemp("api")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    base_url = f"http://127.0.0.1:{sock.getsockname()[1]}"

    backend = await LocalBackend.open(tmp / "objects")
    storage = StorageServicer(backend, signing_key=b"k" * 32, public_url=base_url, default_ttl_seconds=300)
    storage_server, storage_port = await _grpc_server(lambda s: register_storage(s, storage))

    settings = Settings(listen="127.0.0.1:0", database_url=f"sqlite+aiosqlite:///{tmp}/s.db",
                        storage_address=f"127.0.0.1:{storage_port}", lease_seconds=2.0, heartbeat_seconds=0.2,
                        bootstrap_dir=str(tmp), token_cache_seconds=1.0)
    scheduler = await SchedulerApp.start(settings)
    scheduler_server, scheduler_port = await _grpc_server(scheduler.register)

    # The rate limit is tested on a gateway of its own (`Api.gateway`).
    gateway_settings = GatewaySettings(port=0, sse_keepalive_seconds=5.0, rate_limit_requests=0,
                                       scheduler_address=f"127.0.0.1:{scheduler_port}",
                                       storage_address=f"127.0.0.1:{storage_port}")
    try:
        async with serve_gateway(gateway_settings, sock) as client:
            yield Api(scheduler, f"127.0.0.1:{scheduler_port}", tmp / "objects" / "data", base_url, client,
                      (tmp / "runner-token").read_text().strip(), gateway_settings)
    finally:
        await scheduler.sessions.close()
        await scheduler_server.stop(1)
        await scheduler.stop()
        await storage_server.stop(None)
        await backend.close()
