"""Fixtures: a local backend in tmp_path, and the whole service behind a real gRPC server."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import grpc
import pytest
from comfyfleet.storage.v1 import storage_service_pb2_grpc

from services.common.grpc_server import CHANNEL_OPTIONS, SERVER_OPTIONS
from services.storage.config import Settings
from services.storage.local_backend import LocalBackend
from services.storage.server import build_servicer, open_backend, register

SIGNING_KEY = b"test-signing-key-0123456789abcdef"
PUBLIC_URL = "http://gateway.test:8080"


def files_under(root: Path) -> list[str]:
    """Every file below `root`, as sorted posix paths relative to it."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


@pytest.fixture
async def local_backend(tmp_path: Path) -> AsyncIterator[LocalBackend]:
    backend = await LocalBackend.open(tmp_path / "objects")
    yield backend
    await backend.close()


@dataclasses.dataclass
class RunningStorage:
    """A storage service on a loopback port, with a stub on a real channel."""

    stub: storage_service_pb2_grpc.StorageServiceAsyncStub
    settings: Settings
    root: Path

    def files(self) -> list[str]:
        return files_under(self.root)


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[RunningStorage]:
    settings = Settings(
        local_dir=tmp_path / "objects",
        public_url=PUBLIC_URL,
        url_signing_key=SIGNING_KEY,
        url_signing_key_file=tmp_path / "unused-key-file",
        url_ttl_seconds=300,
    )
    backend = await open_backend(settings)
    server = grpc.aio.server(options=SERVER_OPTIONS)
    register(server, build_servicer(settings, backend))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS)
    try:
        stub = cast(
            "storage_service_pb2_grpc.StorageServiceAsyncStub", storage_service_pb2_grpc.StorageServiceStub(channel)
        )
        yield RunningStorage(stub, settings, settings.local_dir)
    finally:
        await channel.close()
        await server.stop(None)
        await backend.close()
