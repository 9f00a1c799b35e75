"""StorageClient.put against the real storage service (local backend in tmp_path) on a loopback
port: a small object goes as one item of the PutObjectsBytes stream the client holds open, a
bigger one as a PutObject stream, and either way the stored bytes are the source's; a storage
service older than PutObjectsBytes gets PutObjectBytes calls, and one older than that streams.

Which RPC carried a put is read where an operator reads it: the storage server's
comfyfleet_grpc_server_handling_seconds count by method (services/common/grpc_telemetry.py);
the items of the held stream, from the client's count of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client import REGISTRY

from services.common.grpc_server import SERVER_OPTIONS
from services.common.grpc_telemetry import server_interceptors
from services.devrun import free_port
from services.runner.errors import ComfyUIUnreachable, StorageError
from services.runner.storage_client import SMALL_PUT_BYTES, UNAVAILABLE, StorageClient
from services.storage.config import Settings
from services.storage.server import SERVICE_NAME, build_servicer, open_backend, register

pytestmark = pytest.mark.timeout(30)
MiB = 1024 * 1024
KEY = "outputs/wf1/9/ComfyUI_00001_.png"


def calls(method: str, code: str = "OK") -> int:
    """How many `method` calls storage servers in this process have answered with `code`."""
    labels = {"grpc_service": SERVICE_NAME, "grpc_method": method, "grpc_code": code}
    return int(REGISTRY.get_sample_value("comfyfleet_grpc_server_handling_seconds_count", labels) or 0)


class Counted:
    """Counts PutObjectBytes and PutObject calls, and PutObjectsBytes items, from creation on."""

    def __init__(self) -> None:
        self._start = {m: calls(m) for m in ("PutObjectBytes", "PutObject", "PutObjectsBytes.item")}

    def __call__(self) -> dict[str, int]:
        return {m: calls(m) - n for m, n in self._start.items()}


class Without(grpc.aio.ServerInterceptor):
    """Serves as an older storage service would: without the methods `missing`."""

    def __init__(self, *missing: str) -> None:
        self.missing = missing
        self.asked = 0

    def replacement(self) -> grpc.RpcMethodHandler | None:
        """What serves a missing method: nothing (UNIMPLEMENTED)."""
        return None

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        if getattr(handler_call_details, "method", "").rpartition("/")[2] in self.missing:
            self.asked += 1
            return self.replacement()
        return await continuation(handler_call_details)


@contextlib.asynccontextmanager
async def storage_service(root: Path, *interceptors: grpc.aio.ServerInterceptor) -> AsyncIterator[StorageClient]:
    """The storage service on a loopback port, and a runner's client of it."""
    settings = Settings(local_dir=root, url_signing_key=b"k" * 32, url_signing_key_file=root / "unused")
    backend = await open_backend(settings)
    server = grpc.aio.server(options=SERVER_OPTIONS, interceptors=[*interceptors, *server_interceptors()])
    register(server, build_servicer(settings, backend))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    client = StorageClient(f"127.0.0.1:{port}")
    try:
        yield client
    finally:
        await client.close()
        await server.stop(None)
        await backend.close()


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[StorageClient]:
    async with storage_service(tmp_path / "objects") as client:
        yield client


async def source(chunks: Iterable[bytes], fail: Exception | None = None) -> AsyncIterator[bytes]:
    """A download as ComfyUI's /view gives it: chunks, possibly cut short by an error."""
    for chunk in chunks:
        yield chunk
    if fail is not None:
        raise fail


def pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


async def stored(client: StorageClient, key: str = KEY) -> bytes:
    async with client.get(key) as obj:
        return b"".join([chunk async for chunk in obj.chunks])


@pytest.mark.parametrize(
    ("size", "piece", "rpc"),
    [
        (0, 1, "item"),
        (5000, 1500, "item"),  # a small PNG in several reads
        (SMALL_PUT_BYTES, 64 * 1024, "item"),  # the most one message takes
        (SMALL_PUT_BYTES + 1, 64 * 1024, "PutObject"),
        (2 * MiB + 300_001, 300_007, "PutObject"),  # read past the boundary in the middle of a piece
        (3 * MiB + 5, 3 * MiB + 5, "PutObject"),  # one piece, split into chunks of 1 MiB
    ],
)
async def test_small_objects_go_in_one_message_big_ones_as_a_stream(
    storage: StorageClient, size: int, piece: int, rpc: str
) -> None:
    data = os.urandom(size)
    counted = Counted()
    ref = await storage.put(KEY, "image/png", source(pieces(data, piece)))
    assert counted() == {"PutObjectBytes": 0, "PutObject": 0 if rpc == "item" else 1,
                         "PutObjectsBytes.item": 1 if rpc == "item" else 0}
    assert storage._items.sent == (1 if rpc == "item" else 0)
    assert (ref.key, ref.size_bytes, ref.sha256, ref.content_type) == (
        KEY, size, hashlib.sha256(data).hexdigest(), "image/png")
    assert await stored(storage) == data


@pytest.mark.parametrize("size", [5000, 2 * MiB])
async def test_a_source_that_fails_stores_nothing(storage: StorageClient, size: int) -> None:
    with pytest.raises(ComfyUIUnreachable, match="ComfyUI went away"):
        await storage.put(KEY, "image/png", source(pieces(os.urandom(size), 64 * 1024),
                                                   fail=ComfyUIUnreachable("ComfyUI went away")))
    with pytest.raises(StorageError, match="no object"):
        await stored(storage)


@pytest.mark.parametrize(("size", "rpc"), [(5000, "PutObjectsBytes"), (2 * MiB, "PutObject")])
async def test_storage_errors_name_the_call_and_the_key(storage: StorageClient, size: int, rpc: str) -> None:
    with pytest.raises(StorageError) as caught:
        await storage.put("../etc/passwd", "image/png", source([os.urandom(size)]))
    assert caught.value.message.startswith(f"{rpc} ../etc/passwd: ")
    if rpc == "PutObjectsBytes":
        assert caught.value.message.startswith(f"{rpc} ../etc/passwd: key '../etc/passwd' must not contain")
    # (A stream refused at its header while the client still writes chunks may end, by grpc.aio's
    # doing, with INTERNAL "Internal error from Core" instead of storage's status: the write fails
    # before the status arrives, and grpc.aio then records its own.)
    assert caught.value.reason != UNAVAILABLE  # a refusal: not worth waiting for


@pytest.mark.parametrize("size", [5000, 2 * MiB])
async def test_storage_down_is_unavailable_either_way(size: int) -> None:
    client = StorageClient(f"127.0.0.1:{free_port()}")  # nothing listens there
    try:
        with pytest.raises(StorageError) as caught:
            await client.put(KEY, "image/png", source([os.urandom(size)]))
    finally:
        await client.close()
    assert caught.value.reason == UNAVAILABLE  # output_store waits for storage to come back


async def test_a_storage_service_without_put_object_bytes_gets_streams(tmp_path: Path) -> None:
    older = Without("PutObjectsBytes", "PutObjectBytes")
    async with storage_service(tmp_path / "objects", older) as client:
        counted = Counted()
        first, second = os.urandom(5000), os.urandom(7000)
        await client.put(KEY, "image/png", source(pieces(first, 1000)))
        await client.put("outputs/wf1/9/ComfyUI_00002_.png", "image/png", source([second]))
        assert older.asked == 2  # each asked once; from then on the client streams
        assert counted() == {"PutObjectBytes": 0, "PutObject": 2, "PutObjectsBytes.item": 0}
        assert await stored(client) == first
        assert await stored(client, "outputs/wf1/9/ComfyUI_00002_.png") == second


async def test_a_storage_service_without_put_objects_bytes_gets_calls(tmp_path: Path) -> None:
    older = Without("PutObjectsBytes")
    async with storage_service(tmp_path / "objects", older) as client:
        counted = Counted()
        for n in range(3):
            await client.put(f"outputs/wf1/9/{n}.png", "image/png", source([os.urandom(300)]))
        assert older.asked == 1
        assert counted() == {"PutObjectBytes": 3, "PutObject": 0, "PutObjectsBytes.item": 0}


class StreamEndsInternal(Without):
    """PutObjectsBytes ends INTERNAL before answering anything: what grpc.aio sometimes makes of
    an older storage service's UNIMPLEMENTED while puts are on their way."""

    def __init__(self) -> None:
        super().__init__("PutObjectsBytes")

    def replacement(self) -> grpc.RpcMethodHandler:
        async def refuse(_requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            await context.abort(grpc.StatusCode.INTERNAL, "Internal error from Core")

        return grpc.stream_stream_rpc_method_handler(refuse)


async def test_puts_whose_stream_breaks_are_put_again_at_once_as_calls(tmp_path: Path) -> None:
    refusing = StreamEndsInternal()
    async with storage_service(tmp_path / "objects", refusing) as client:
        counted = Counted()
        datas = [os.urandom(300 + n) for n in range(4)]
        keys = [f"outputs/wf1/9/{n}.png" for n in range(4)]
        puts = (client.put(k, "image/png", source([d])) for k, d in zip(keys, datas, strict=True))
        refs = await asyncio.gather(*puts)
        assert [r.sha256 for r in refs] == [hashlib.sha256(d).hexdigest() for d in datas]
        assert refusing.asked >= 1 and counted()["PutObjectBytes"] == 4
        for key, data in zip(keys, datas, strict=True):
            assert await stored(client, key) == data


async def test_concurrent_small_puts_share_one_stream_and_a_refused_item_fails_alone(storage: StorageClient) -> None:
    datas = [os.urandom(1000 + n) for n in range(12)]
    keys = [f"outputs/wf1/9/{n}.png" for n in range(12)]
    results = await asyncio.gather(
        *(storage.put(k, "image/png", source([d])) for k, d in zip(keys, datas, strict=True)),
        storage.put("outputs/wf1/9/0.png/inside", "image/png", source([b"x"])),  # 0.png is an object
        return_exceptions=True)
    assert [r.sha256 for r in results[:12]] == [hashlib.sha256(d).hexdigest() for d in datas]  # type: ignore[union-attr]
    assert isinstance(results[12], StorageError) and results[12].reason != UNAVAILABLE
    assert (storage._items.opened, storage._items.sent) == (1, 13)
    for key, data in zip(keys, datas, strict=True):
        assert await stored(storage, key) == data
    await storage.put(KEY, "image/png", source([b"after"]))  # the stream goes on
    assert storage._items.opened == 1


async def test_a_restarted_storage_gets_a_new_stream(tmp_path: Path) -> None:
    """The held stream ends when storage stops (end_streams, then the drain); the next put
    opens another one to the service that took its place."""
    root = tmp_path / "objects"
    settings = Settings(local_dir=root, url_signing_key=b"k" * 32, url_signing_key_file=root / "unused")
    port = free_port()
    client = StorageClient(f"127.0.0.1:{port}")

    async def started() -> tuple[grpc.aio.Server, Any, Any]:
        backend = await open_backend(settings)
        servicer = build_servicer(settings, backend)
        server = grpc.aio.server(options=SERVER_OPTIONS, interceptors=server_interceptors())
        register(server, servicer)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        return server, servicer, backend

    try:
        server, servicer, backend = await started()
        await client.put(KEY, "image/png", source([b"first"]))
        await servicer.end_streams()
        await server.stop(5)
        await backend.close()
        server, servicer, backend = await started()
        try:
            await client.put(KEY, "image/png", source([b"second"]))
            assert await stored(client) == b"second"
            assert client._items.opened == 2
        finally:
            await server.stop(None)
            await backend.close()
    finally:
        await client.close()
