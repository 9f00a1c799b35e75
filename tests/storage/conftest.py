"""Fixtures: local backends in tmp_path, the whole service behind a real gRPC server, and the
s3 backend against SeaweedFS (one server per test session, one bucket per test)."""

from __future__ import annotations

import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import cast

import grpc
import pytest
from comfyfleet.storage.v1 import storage_service_pb2_grpc

from services.common.grpc_server import CHANNEL_OPTIONS, SERVER_OPTIONS
from services.storage.config import S3Settings, Settings
from services.storage.local_backend import LocalBackend
from services.storage.s3_backend import S3Backend
from services.storage.server import build_servicer, open_backend, register
from tests.storage.seaweed import SeaweedS3

SIGNING_KEY = b"test-signing-key-0123456789abcdef"
PUBLIC_URL = "http://gateway.test:8080"


def files_under(root: Path) -> list[str]:
    """Every file below `root`, as sorted posix paths relative to it."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """The directory of a test's local backends."""
    return tmp_path / "objects"


OpenLocal = Callable[..., Awaitable[LocalBackend]]


@pytest.fixture
async def open_local(root: Path) -> AsyncIterator[OpenLocal]:
    """Opens local backends on `root` (`use_xattrs` as `LocalBackend.open` takes it): one per
    layout, or two one after the other like an upgrade; closed at the end, the last first."""
    opened: list[LocalBackend] = []

    async def open_local(*, use_xattrs: bool | None = None) -> LocalBackend:
        opened.append(await LocalBackend.open(root, use_xattrs=use_xattrs))
        return opened[-1]

    yield open_local
    for backend in reversed(opened):
        await backend.close()


@dataclasses.dataclass
class RunningStorage:
    """A storage service on a loopback port, with a stub on a real channel."""

    stub: storage_service_pb2_grpc.StorageServiceAsyncStub
    settings: Settings
    root: Path

    def files(self) -> list[str]:
        return files_under(self.root)


@contextlib.asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[storage_service_pb2_grpc.StorageServiceAsyncStub]:
    """The storage service with `settings` on a loopback port, and a stub on a real channel to it."""
    backend = await open_backend(settings)
    server = grpc.aio.server(options=SERVER_OPTIONS)
    register(server, build_servicer(settings, backend))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS)
    try:
        yield cast(
            "storage_service_pb2_grpc.StorageServiceAsyncStub", storage_service_pb2_grpc.StorageServiceStub(channel)
        )
    finally:
        await channel.close()
        await server.stop(None)
        await backend.close()


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[RunningStorage]:
    settings = Settings(
        local_dir=tmp_path / "objects",
        public_url=PUBLIC_URL,
        url_signing_key=SIGNING_KEY,
        url_signing_key_file=tmp_path / "unused-key-file",
        url_ttl_seconds=300,
    )
    async with serving(settings) as stub:
        yield RunningStorage(stub, settings, settings.local_dir)


# -- the s3 backend, against a real S3 server (SeaweedFS) started once per test session -------


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    server = SeaweedS3(tmp_path_factory.mktemp("seaweed"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def bucket(seaweed: SeaweedS3) -> Iterator[str]:
    """A fresh bucket name per test (the backend creates it); emptied and removed afterwards."""
    name = f"t-{uuid.uuid4().hex[:16]}"
    yield name
    client = seaweed.client()
    if client.bucket_exists(name):
        for key in seaweed.keys(name):
            client.remove_object(name, key)
        client.remove_bucket(name)


def s3_settings(seaweed: SeaweedS3, bucket: str, **overrides: object) -> S3Settings:
    env = seaweed.env(bucket)
    base = S3Settings(endpoint=env["STORAGE_S3_ENDPOINT"], access_key=env["STORAGE_S3_ACCESS_KEY"],
                      secret_key=env["STORAGE_S3_SECRET_KEY"], bucket=bucket, part_size_bytes=5 * 1024 * 1024)
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


@pytest.fixture
async def s3_backend(seaweed: SeaweedS3, bucket: str) -> AsyncIterator[S3Backend]:
    backend = await S3Backend.open(s3_settings(seaweed, bucket))
    yield backend
    await backend.close()
