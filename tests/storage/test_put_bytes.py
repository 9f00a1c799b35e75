"""PutObjectBytes, the one-message put of a small object, through a real grpc.aio server on a
loopback port, over both backends (local in tmp_path, s3 against SeaweedFS).

Each refusal is checked as a caller sees it (code and reason) and for what it leaves behind:
nothing under the key and nothing in the backend's files or bucket.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest
from comfyfleet.storage.v1 import object_pb2
from comfyfleet.storage.v1 import storage_service_pb2 as pb

from services.storage.config import Settings

from .conftest import PUBLIC_URL, SIGNING_KEY, files_under, s3_settings, serving
from .seaweed import SeaweedS3
from .test_service import rpc_error

if TYPE_CHECKING:
    from comfyfleet.storage.v1.storage_service_pb2_grpc import StorageServiceAsyncStub as Stub

pytestmark = pytest.mark.timeout(60)
MiB = 1024 * 1024
KEY = "outputs/wf1/9/ComfyUI_00001_.png"


@dataclasses.dataclass
class Service:
    """A storage service on a loopback port, and what its backend holds (files or bucket keys)."""

    stub: Stub
    held: Callable[[], list[str]]


@pytest.fixture(params=["local", "s3"])
async def service(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Service]:
    if request.param == "local":
        settings = Settings(local_dir=tmp_path / "objects", public_url=PUBLIC_URL, url_signing_key=SIGNING_KEY,
                            url_signing_key_file=tmp_path / "unused-key-file")
        async with serving(settings) as stub:
            yield Service(stub, lambda: files_under(settings.local_dir))
        return
    seaweed: SeaweedS3 = request.getfixturevalue("seaweed")
    bucket: str = request.getfixturevalue("bucket")
    async with serving(Settings(backend="s3", s3=s3_settings(seaweed, bucket), url_signing_key=SIGNING_KEY)) as stub:
        yield Service(stub, lambda: seaweed.keys(bucket))


def put_bytes(data: bytes, *, key: str = KEY, content_type: str = "", max_size_bytes: int = 0,
              sha256: str = "") -> pb.PutObjectBytesRequest:
    header = pb.PutObjectHeader(key=key, content_type=content_type, max_size_bytes=max_size_bytes)
    return pb.PutObjectBytesRequest(header=header, data=data, sha256=sha256)


async def read(service: Service) -> tuple[object_pb2.ObjectRef, bytes]:
    """The ref and the bytes GetObject streams back for KEY."""
    messages = [m async for m in service.stub.GetObject(pb.GetObjectRequest(key=KEY))]
    return messages[0].object, b"".join(m.chunk for m in messages[1:])


async def assert_nothing_stored(service: Service) -> None:
    code, reason, _ = await rpc_error(service.stub.GetObject(pb.GetObjectRequest(key=KEY)))
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "OBJECT_NOT_FOUND")
    assert service.held() == []


@pytest.mark.parametrize("size", [0, 5000, MiB])  # empty; a small PNG; the most one message takes
async def test_a_small_object_round_trips(service: Service, size: int) -> None:
    data = os.urandom(size)
    sha256 = hashlib.sha256(data).hexdigest()
    response = await service.stub.PutObjectBytes(put_bytes(data, content_type="image/png", sha256=sha256))
    ref = response.object
    assert (ref.key, ref.size_bytes, ref.sha256, ref.content_type) == (KEY, size, sha256, "image/png")
    assert await read(service) == (ref, data)


async def test_it_replaces_the_object_under_the_key(service: Service) -> None:
    await service.stub.PutObjectBytes(put_bytes(b"old bytes"))
    response = await service.stub.PutObjectBytes(put_bytes(b"new bytes"))
    assert await read(service) == (response.object, b"new bytes")


async def test_more_than_1_mib_is_refused_and_nothing_is_stored(service: Service) -> None:
    code, reason, message = await rpc_error(service.stub.PutObjectBytes(put_bytes(os.urandom(MiB + 1))))
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "PUT_DATA_TOO_LARGE")
    assert "at most 1048576 bytes, not 1048577" in message
    await assert_nothing_stored(service)


async def test_max_size_bytes_is_enforced(service: Service) -> None:
    code, reason, message = await rpc_error(service.stub.PutObjectBytes(put_bytes(b"x" * 1000, max_size_bytes=999)))
    assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "OBJECT_TOO_LARGE")
    assert "999 bytes" in message
    await assert_nothing_stored(service)

    response = await service.stub.PutObjectBytes(put_bytes(b"x" * 1000, max_size_bytes=1000))
    assert response.object.size_bytes == 1000


async def test_a_wrong_sha256_is_refused_and_the_previous_object_survives(service: Service) -> None:
    code, reason, _ = await rpc_error(service.stub.PutObjectBytes(put_bytes(b"new bytes", sha256="ab" * 32)))
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "PUT_SHA256_MISMATCH")
    await assert_nothing_stored(service)

    old = (await service.stub.PutObjectBytes(put_bytes(b"old bytes"))).object
    wrong = hashlib.sha256(b"other bytes").hexdigest()
    code, reason, _ = await rpc_error(service.stub.PutObjectBytes(put_bytes(b"new bytes", sha256=wrong)))
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "PUT_SHA256_MISMATCH")
    assert await read(service) == (old, b"old bytes")


@pytest.mark.parametrize(
    ("request_", "reason"),
    [
        (put_bytes(b"x", key="../etc/passwd"), "KEY_INVALID"),
        (put_bytes(b"x", key=""), "KEY_INVALID"),  # no header at all: an empty key
        (put_bytes(b"x", content_type="a\nb"), "CONTENT_TYPE_INVALID"),
        (put_bytes(b"x", max_size_bytes=-1), "MAX_SIZE_INVALID"),
    ],
    ids=["dotdot-key", "empty-key", "content-type", "negative-max-size"],
)
async def test_the_stream_rules_apply(service: Service, request_: pb.PutObjectBytesRequest, reason: str) -> None:
    code, got_reason, _ = await rpc_error(service.stub.PutObjectBytes(request_))
    assert (code, got_reason) == (grpc.StatusCode.INVALID_ARGUMENT, reason)
    assert service.held() == []
