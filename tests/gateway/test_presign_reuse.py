"""GrpcStorage.presign reuses a signed URL for a moment (an output's frame, the terminal status
frame and GET /outputs present the same key within milliseconds), against a real gRPC server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest_asyncio
from comfyfleet.storage.v1 import storage_service_pb2

from services.gateway.storage_client import GrpcStorage
from tests.gateway.fakes import FakeStorage, add_storage, serve, ts

KEY = "outputs/7c9e6679-7425-40de-944b-e07fc1f90ae7/3/img_00001.png"


@dataclass
class CountingStorage(FakeStorage):
    """FakeStorage whose URLs live `lifetime` seconds, counting the PresignObject calls."""

    lifetime: int = 300
    presigned: list[str] = field(default_factory=list)
    now: float = 1_000_000.0

    async def PresignObject(
        self, request: storage_service_pb2.PresignObjectRequest, context: Any
    ) -> storage_service_pb2.PresignObjectResponse:
        self.presigned.append(request.key)
        expires = int(self.now) + self.lifetime
        return storage_service_pb2.PresignObjectResponse(url=f"u{len(self.presigned)}", expires_at=ts(expires))


@dataclass
class Rig:
    fake: CountingStorage
    client: GrpcStorage
    clock: list[float]


@pytest_asyncio.fixture(loop_scope="package")
async def rig() -> AsyncIterator[Rig]:
    fake = CountingStorage()
    server, port = await serve(add_storage(fake))
    clock = [fake.now]
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Rig(fake, GrpcStorage(channel, clock=lambda: clock[0], wall_clock=lambda: clock[0]), clock)
    finally:
        await channel.close()
        await server.stop(None)


async def test_the_same_key_is_signed_once_within_the_reuse_window(rig: Rig) -> None:
    first = await rig.client.presign(KEY)
    rig.clock[0] += 1.5
    assert await rig.client.presign(KEY) == first
    assert rig.fake.presigned == [KEY]
    assert await rig.client.presign(KEY + ".other") == "u2"  # another key: its own call


async def test_after_the_window_a_fresh_url_is_signed(rig: Rig) -> None:
    assert await rig.client.presign(KEY) == "u1"
    rig.clock[0] += 2.01
    assert await rig.client.presign(KEY) == "u2"
    assert rig.fake.presigned == [KEY, KEY]


async def test_a_short_lived_url_is_reused_for_at_most_2_percent_of_its_life(rig: Rig) -> None:
    rig.fake.lifetime = 10  # reusable for 0.2 s
    assert await rig.client.presign(KEY) == "u1"
    rig.clock[0] += 0.15
    assert await rig.client.presign(KEY) == "u1"
    rig.clock[0] += 0.1
    assert await rig.client.presign(KEY) == "u2"


async def test_deleting_a_prefix_forgets_its_urls(rig: Rig) -> None:
    await rig.client.presign(KEY)
    await rig.client.delete_prefix(KEY.rsplit("/", 2)[0] + "/")
    await rig.client.presign(KEY)
    assert rig.fake.presigned == [KEY, KEY]
