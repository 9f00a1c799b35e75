"""StorageService over the s3 backend (SeaweedFS): the PutObject finish rule and presigned URLs.

Through a real grpc.aio server and channel; the bucket is inspected with a separate client.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, cast

import grpc
import httpx
import pytest
from comfyfleet.storage.v1 import storage_service_pb2 as pb

from services.storage.config import Settings

from .conftest import SIGNING_KEY, s3_settings, serving
from .seaweed import SeaweedS3
from .test_service import put_requests, rpc_error

if TYPE_CHECKING:
    from comfyfleet.storage.v1.storage_service_pb2_grpc import StorageServiceAsyncStub as Stub

pytestmark = pytest.mark.timeout(60)
MiB = 1024 * 1024


@pytest.fixture
async def stub(seaweed: SeaweedS3, bucket: str) -> AsyncIterator[Stub]:
    settings = Settings(backend="s3", s3=s3_settings(seaweed, bucket), url_signing_key=SIGNING_KEY)
    async with serving(settings) as stub:
        yield cast("Stub", stub)


@pytest.mark.parametrize("size", [100, 12 * MiB])  # one PUT; multipart
async def test_a_stream_without_its_finish_leaves_nothing_in_the_bucket(
    stub: Stub, seaweed: SeaweedS3, bucket: str, size: int
) -> None:
    chunks = [os.urandom(min(MiB, size - i)) for i in range(0, size, MiB)]
    requests = put_requests("inputs/wf1/p/a.bin", chunks, finish=False)
    code, reason, _ = await rpc_error(stub.PutObject(iter(requests)))
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "PUT_FINISH_MISSING")
    assert seaweed.keys(bucket) == []
    assert seaweed.pending_uploads(bucket) == 0


async def test_a_put_cancelled_mid_stream_leaves_nothing(stub: Stub, seaweed: SeaweedS3, bucket: str) -> None:
    call = stub.PutObject()
    await call.write(pb.PutObjectRequest(header=pb.PutObjectHeader(key="inputs/wf1/p/upload.bin")))
    for _ in range(12):  # past the first 5 MiB part: a multipart upload is under way
        await call.write(pb.PutObjectRequest(chunk=os.urandom(MiB)))
    await asyncio.sleep(0.5)
    call.cancel()
    for _ in range(100):
        if seaweed.pending_uploads(bucket) == 0:
            break
        await asyncio.sleep(0.05)
    assert seaweed.keys(bucket) == []
    assert seaweed.pending_uploads(bucket) == 0


async def test_url_signing_is_left_to_presign_with_s3(stub: Stub) -> None:
    answer = await stub.GetUrlSigning(pb.GetUrlSigningRequest())
    assert not answer.HasField("gateway")  # S3's own presigned URLs: no key for the gateway


async def test_presign_returns_an_s3_url_that_downloads_the_object(stub: Stub, seaweed: SeaweedS3) -> None:
    data = os.urandom(5000)
    await stub.PutObject(iter(put_requests("outputs/wf1/9/a.png", [data], content_type="image/png")))
    presigned = await stub.PresignObject(pb.PresignObjectRequest(key="outputs/wf1/9/a.png"))
    assert presigned.url.startswith(f"http://{seaweed.endpoint}/")
    async with httpx.AsyncClient() as http:
        got = await http.get(presigned.url)
    assert (got.status_code, got.content) == (200, data)
