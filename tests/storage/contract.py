"""The contract every storage backend keeps, written against the Backend interface only.

A backend's test module subclasses BackendContract and provides a `backend` fixture; the
`s3` backend will reuse these tests as they are. Backend-specific checks (files on disk,
buckets) live beside the subclass, not here.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Iterable

import pytest

from services.common.errors import InvalidArgument
from services.storage.backend import DEFAULT_CONTENT_TYPE, READ_CHUNK_BYTES, Backend, ObjectRef
from services.storage.errors import InvalidKey, ObjectNotFound, ObjectTooLarge, RangeNotSatisfiable

MiB = 1024 * 1024


async def chunked(data: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    """`data` as a stream of `size`-byte chunks, yielding to the loop between them."""
    for start in range(0, len(data), size):
        yield data[start : start + size]
        await asyncio.sleep(0)


async def put_bytes(
    backend: Backend, key: str, data: bytes, *, content_type: str = "", max_size_bytes: int = 0
) -> ObjectRef:
    return await backend.put(key, chunked(data), content_type=content_type, max_size_bytes=max_size_bytes)


async def read(backend: Backend, key: str, offset: int = 0, length: int = 0) -> tuple[ObjectRef, list[bytes]]:
    ref, stream = await backend.get(key, offset_bytes=offset, length_bytes=length)
    return ref, [chunk async for chunk in stream]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


BAD_KEYS = [
    "",
    "/inputs/a.png",
    "inputs/../secrets",
    "..",
    "inputs/./a.png",
    "inputs//a.png",
    "inputs/",
    "inputs\\a.png",
    "inputs/a\x00.png",
    "inputs/a\n.png",
    "k" * 1025,
    "é" * 513,  # 1026 UTF-8 bytes
]


class BackendContract:
    """What every backend must do; subclasses provide the `backend` fixture."""

    async def test_roundtrip_of_a_multi_mib_object_keeps_bytes_size_and_sha256(self, backend: Backend) -> None:
        data = os.urandom(5 * MiB + 123)
        ref = await put_bytes(backend, "outputs/wf1/9/image.png", data, content_type="image/png")
        assert ref == ObjectRef("outputs/wf1/9/image.png", len(data), sha(data), "image/png")

        got, chunks = await read(backend, "outputs/wf1/9/image.png")
        assert got == ref
        assert b"".join(chunks) == data
        assert max(len(c) for c in chunks) <= READ_CHUNK_BYTES
        assert await backend.stat("outputs/wf1/9/image.png") == ref
        assert await backend.exists("outputs/wf1/9/image.png")

    async def test_empty_object_gets_the_default_content_type(self, backend: Backend) -> None:
        ref = await put_bytes(backend, "inputs/wf1/p/empty.txt", b"", content_type="")
        assert ref == ObjectRef("inputs/wf1/p/empty.txt", 0, sha(b""), DEFAULT_CONTENT_TYPE)
        assert await read(backend, "inputs/wf1/p/empty.txt") == (ref, [])

    @pytest.mark.parametrize(
        ("offset", "length", "expected"),
        [
            (0, 0, slice(0, None)),  # whole object
            (10, 0, slice(10, None)),  # from 10 to the end
            (10, 5, slice(10, 15)),
            (MiB - 3, 10, slice(MiB - 3, MiB + 7)),  # across a chunk boundary
            (2 * MiB + 100, 1000, slice(2 * MiB + 100, None)),  # length past the end is clamped
            (2 * MiB + 100, 0, slice(2 * MiB + 100, None)),  # offset == size: nothing
        ],
    )
    async def test_ranged_reads_return_the_slice_and_the_whole_objects_ref(
        self, backend: Backend, offset: int, length: int, expected: slice
    ) -> None:
        data = os.urandom(2 * MiB + 100)
        ref = await put_bytes(backend, "outputs/wf1/1/video.mp4", data)
        got, chunks = await read(backend, "outputs/wf1/1/video.mp4", offset, length)
        assert got == ref
        assert b"".join(chunks) == data[expected]

    async def test_reads_past_the_end_or_negative_ranges_are_refused(self, backend: Backend) -> None:
        await put_bytes(backend, "outputs/wf1/1/a.bin", b"0123456789")
        with pytest.raises(RangeNotSatisfiable):
            await backend.get("outputs/wf1/1/a.bin", offset_bytes=11)
        with pytest.raises(InvalidArgument):
            await backend.get("outputs/wf1/1/a.bin", offset_bytes=-1)
        with pytest.raises(InvalidArgument):
            await backend.get("outputs/wf1/1/a.bin", length_bytes=-1)

    async def test_a_stream_closed_early_can_be_read_again(self, backend: Backend) -> None:
        data = os.urandom(3 * MiB)
        await put_bytes(backend, "outputs/wf1/1/big.bin", data)
        _, stream = await backend.get("outputs/wf1/1/big.bin")
        assert await anext(aiter(stream)) == data[:READ_CHUNK_BYTES]
        await stream.aclose()
        assert b"".join((await read(backend, "outputs/wf1/1/big.bin"))[1]) == data

    async def test_overwrite_replaces_bytes_sha256_and_content_type(self, backend: Backend) -> None:
        await put_bytes(backend, "inputs/wf1/p/a", b"first version", content_type="text/plain")
        ref = await put_bytes(backend, "inputs/wf1/p/a", b"second", content_type="image/webp")
        assert ref == ObjectRef("inputs/wf1/p/a", 6, sha(b"second"), "image/webp")
        assert await read(backend, "inputs/wf1/p/a") == (ref, [b"second"])

    async def test_over_the_size_limit_stores_nothing(self, backend: Backend) -> None:
        with pytest.raises(ObjectTooLarge, match="1048576 bytes"):
            await put_bytes(backend, "inputs/wf1/p/big.bin", os.urandom(MiB + 1), max_size_bytes=MiB)
        assert not await backend.exists("inputs/wf1/p/big.bin")
        ref = await put_bytes(backend, "inputs/wf1/p/big.bin", b"x" * MiB, max_size_bytes=MiB)  # exactly at
        assert ref.size_bytes == MiB

    async def test_over_the_size_limit_keeps_the_previous_object(self, backend: Backend) -> None:
        old = await put_bytes(backend, "inputs/wf1/p/a.bin", b"old bytes")
        with pytest.raises(ObjectTooLarge):
            await put_bytes(backend, "inputs/wf1/p/a.bin", b"y" * 2000, max_size_bytes=1000)
        assert await read(backend, "inputs/wf1/p/a.bin") == (old, [b"old bytes"])

    async def test_a_failing_upload_stream_stores_nothing(self, backend: Backend) -> None:
        async def broken() -> AsyncIterator[bytes]:
            yield b"part one"
            raise ConnectionResetError("client went away")

        with pytest.raises(ConnectionResetError):
            await backend.put("inputs/wf1/p/a.bin", broken())
        assert not await backend.exists("inputs/wf1/p/a.bin")

    async def test_missing_key(self, backend: Backend) -> None:
        with pytest.raises(ObjectNotFound):
            await backend.get("outputs/nope/1/a.png")
        assert await backend.stat("outputs/nope/1/a.png") is None
        assert not await backend.exists("outputs/nope/1/a.png")
        assert await backend.delete(["outputs/nope/1/a.png"]) == 0

    async def test_delete_by_prefix_removes_only_that_prefix(self, backend: Backend) -> None:
        for key in ("inputs/wf1/a/x.png", "inputs/wf1/b/y.png", "inputs/wf2/z.png", "inputs/wf1x/w.png"):
            await put_bytes(backend, key, key.encode())
        # the key list overlaps the prefix: each object counts once
        assert await backend.delete(["inputs/wf1/a/x.png"], prefix="inputs/wf1/") == 2
        assert not await backend.exists("inputs/wf1/a/x.png")
        assert not await backend.exists("inputs/wf1/b/y.png")
        assert await backend.exists("inputs/wf2/z.png")
        assert await backend.exists("inputs/wf1x/w.png")
        assert await backend.delete(prefix="inputs/wf1/") == 0

    async def test_delete_by_keys(self, backend: Backend) -> None:
        await put_bytes(backend, "outputs/wf1/1/a.png", b"a")
        await put_bytes(backend, "outputs/wf1/1/b.png", b"b")
        assert await backend.delete(["outputs/wf1/1/a.png", "outputs/wf1/1/missing.png"]) == 1
        assert await backend.exists("outputs/wf1/1/b.png")

    @pytest.mark.parametrize("key", BAD_KEYS)
    async def test_bad_keys_are_refused_everywhere(self, backend: Backend, key: str) -> None:
        with pytest.raises(InvalidKey):
            await put_bytes(backend, key, b"data")
        with pytest.raises(InvalidKey):
            await backend.get(key)
        with pytest.raises(InvalidKey):
            await backend.stat(key)
        with pytest.raises(InvalidKey):
            await backend.delete([key])

    @pytest.mark.parametrize("prefix", ["inputs/wf1", "/inputs/", "inputs/../", "/", "inputs//"])
    async def test_bad_prefixes_are_refused(self, backend: Backend, prefix: str) -> None:
        with pytest.raises(InvalidKey):
            await backend.delete(prefix=prefix)

    async def test_unsafe_content_types_are_refused(self, backend: Backend) -> None:
        with pytest.raises(InvalidArgument):
            await put_bytes(backend, "inputs/wf1/p/a", b"x", content_type="text/plain\r\nX-Evil: 1")
        with pytest.raises(InvalidArgument):
            await put_bytes(backend, "inputs/wf1/p/a", b"x", max_size_bytes=-1)

    async def test_concurrent_puts_of_one_key_leave_one_whole_object(self, backend: Backend) -> None:
        payloads = [bytes([i]) * (MiB + 1000 * i) for i in range(8)]
        refs = await asyncio.gather(
            *(backend.put("outputs/wf1/1/race.bin", chunked(p), content_type=f"x/{i}") for i, p in enumerate(payloads))
        )
        got, chunks = await read(backend, "outputs/wf1/1/race.bin")
        data = b"".join(chunks)
        assert data in payloads
        winner = payloads.index(data)
        assert got == refs[winner] == ObjectRef("outputs/wf1/1/race.bin", len(data), sha(data), f"x/{winner}")

    async def test_keys_that_share_a_directory_are_independent(self, backend: Backend) -> None:
        keys: Iterable[str] = [f"outputs/wf1/{n}/image_{i}.png" for n in (1, 2) for i in range(3)]
        await asyncio.gather(*(put_bytes(backend, k, k.encode()) for k in keys))
        for key in keys:
            assert (await read(backend, key))[1] == [key.encode()]
