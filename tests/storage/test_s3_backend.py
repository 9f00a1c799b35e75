"""The s3 backend against a real S3 server (SeaweedFS): the shared contract, plus S3 specifics.

What a user of the bucket would see is checked with a separate minio client: which keys exist,
which multipart uploads are left pending, what a presigned URL returns.
"""

from __future__ import annotations

import asyncio
import os
import time
import tracemalloc
from collections.abc import AsyncIterator

import httpx
import pytest

from services.common.errors import Unavailable
from services.storage.errors import ObjectTooLarge
from services.storage.s3_backend import S3Backend

from .conftest import s3_settings
from .contract import BackendContract, MiB, chunked, put_bytes, read, sha
from .seaweed import SeaweedS3

pytestmark = pytest.mark.timeout(60)


class TestS3BackendContract(BackendContract):
    @pytest.fixture
    def backend(self, s3_backend: S3Backend) -> S3Backend:
        return s3_backend


async def test_the_bucket_is_created_at_start(seaweed: SeaweedS3, bucket: str) -> None:
    assert not seaweed.client().bucket_exists(bucket)
    backend = await S3Backend.open(s3_settings(seaweed, bucket))
    await backend.close()
    assert seaweed.client().bucket_exists(bucket)


async def test_content_type_and_sha256_are_kept_with_the_object(
    s3_backend: S3Backend, seaweed: SeaweedS3, bucket: str
) -> None:
    small, large = os.urandom(1000), os.urandom(6 * MiB)  # one PUT; a multipart upload (5 MiB parts)
    await put_bytes(s3_backend, "outputs/wf1/9/small.png", small, content_type="image/png")
    await put_bytes(s3_backend, "outputs/wf1/9/large.mp4", large, content_type="video/mp4")
    client = seaweed.client()
    info = client.stat_object(bucket, "outputs/wf1/9/small.png")
    assert info.metadata is not None
    assert (info.content_type, info.metadata.get("x-amz-meta-sha256")) == ("image/png", sha(small))
    info = client.stat_object(bucket, "outputs/wf1/9/large.mp4")
    tags = client.get_object_tags(bucket, "outputs/wf1/9/large.mp4")
    assert (info.content_type, info.size, tags and tags["sha256"]) == ("video/mp4", 6 * MiB, sha(large))


@pytest.mark.parametrize("size", [2 * MiB, 12 * MiB])  # the one-PUT path and the multipart path
async def test_an_upload_that_fails_midway_leaves_nothing_in_the_bucket(
    s3_backend: S3Backend, seaweed: SeaweedS3, bucket: str, size: int
) -> None:
    async def broken() -> AsyncIterator[bytes]:
        async for chunk in chunked(os.urandom(size), MiB):
            yield chunk
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        await s3_backend.put("inputs/wf1/p/a.bin", broken())
    with pytest.raises(ObjectTooLarge):
        await put_bytes(s3_backend, "inputs/wf1/p/b.bin", os.urandom(size), max_size_bytes=size - 1)
    assert seaweed.keys(bucket) == []
    assert seaweed.pending_uploads(bucket) == 0


async def test_a_cancelled_multipart_upload_is_aborted(s3_backend: S3Backend, seaweed: SeaweedS3, bucket: str) -> None:
    sent = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        for _ in range(12):
            yield os.urandom(MiB)
        sent.set()
        await asyncio.sleep(60)
        yield b"never"

    task = asyncio.create_task(s3_backend.put("inputs/wf1/p/a.bin", slow()))
    await asyncio.wait_for(sent.wait(), 30)
    await asyncio.sleep(0.3)  # a part is up: the multipart upload exists
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seaweed.keys(bucket) == []
    assert seaweed.pending_uploads(bucket) == 0


async def test_a_48_mib_object_streams_through_without_being_held_whole(seaweed: SeaweedS3, bucket: str) -> None:
    s3_backend = await S3Backend.open(s3_settings(seaweed, bucket, parallel_parts=1))  # 5 MiB parts

    async def generated() -> AsyncIterator[bytes]:
        for _ in range(48):
            yield os.urandom(MiB)

    tracemalloc.start()
    try:
        ref = await s3_backend.put("outputs/wf1/9/video.mp4", generated())
        _, put_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        _, stream = await s3_backend.get("outputs/wf1/9/video.mp4")
        received = 0
        async for chunk in stream:
            received += len(chunk)
        _, get_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        await s3_backend.close()
    assert ref.size_bytes == received == 48 * MiB
    # a part being read, its copy for minio and one being sent (5 MiB each) are expected;
    # holding the whole object would be 48 MiB
    assert put_peak < 24 * MiB, f"put peak {put_peak / MiB:.1f} MiB"
    assert get_peak < 8 * MiB, f"get peak {get_peak / MiB:.1f} MiB"


async def test_a_presigned_url_downloads_until_it_expires_and_a_tampered_one_is_refused(
    s3_backend: S3Backend,
) -> None:
    data = os.urandom(3000)
    await put_bytes(s3_backend, "outputs/wf1/9/my image.png", data, content_type="image/png")
    url = await s3_backend.presign("outputs/wf1/9/my image.png", 2)
    assert url is not None
    async with httpx.AsyncClient() as http:
        got = await http.get(url)
        assert (got.status_code, got.content, got.headers["content-type"]) == (200, data, "image/png")

        signature = url.split("X-Amz-Signature=")[1][:64]
        tampered = url.replace(signature, ("0" if signature[0] != "0" else "1") + signature[1:])
        assert (await http.get(tampered)).status_code == 403
        other_key = url.replace("my%20image.png", "other.png")
        assert (await http.get(other_key)).status_code == 403

        await asyncio.sleep(3.5)  # past the 2 s lifetime, with X-Amz-Date's whole seconds to spare
        assert (await http.get(url)).status_code == 403


async def test_a_range_read_and_delete_by_prefix_see_only_their_objects(s3_backend: S3Backend) -> None:
    data = os.urandom(MiB)
    ref = await put_bytes(s3_backend, "outputs/wf1/9/a.bin", data)
    assert await read(s3_backend, "outputs/wf1/9/a.bin", 1000, 10) == (ref, [data[1000:1010]])
    await put_bytes(s3_backend, "outputs/wf1x/9/b.bin", b"b")
    assert await s3_backend.delete(prefix="outputs/wf1/") == 1
    assert await s3_backend.exists("outputs/wf1x/9/b.bin")


async def test_an_unreachable_store_is_unavailable(seaweed: SeaweedS3, bucket: str) -> None:
    from services.devrun import free_port

    settings = s3_settings(seaweed, bucket, endpoint=f"127.0.0.1:{free_port()}")
    started = time.monotonic()
    with pytest.raises(Unavailable) as caught:
        await S3Backend.open(settings)
    assert caught.value.reason == "S3_UNAVAILABLE"
    assert time.monotonic() - started < 10
