"""Adapter: the storage service's object streams, as the runner uses them.

    get(key)                       GetObject: the ObjectRef first, then the byte chunks
    put(key, content_type, chunks) up to SMALL_PUT_BYTES: an item of the PutObjectsBytes stream
                                   held open (storage_stream.py), the object in one message;
                                   more: PutObject, a header, chunks of at most 1 MiB, a finish

Most outputs are a few KiB, and grpc.aio spends less on one message of an open stream than on
a call, and less on a call than on a stream of three messages, so `put` reads the source until
it ends or passes SMALL_PUT_BYTES, and only a bigger object gets a PutObject stream of its own
(starting with the chunks already read). A storage service older than PutObjectsBytes answers
UNIMPLEMENTED: then each small object is a PutObjectBytes call, and one older than that gets
streams.

`ObjectStore` is the small interface executions depend on; `StorageClient` implements it
over a grpc.aio channel. gRPC failures become `StorageError` (with the domain error the
server raised as its cause).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Protocol

import grpc
from comfyfleet.storage.v1 import object_pb2, storage_service_pb2, storage_service_pb2_grpc

from services.common.errors import ComfyfleetError, from_rpc_error
from services.common.grpc_server import CHANNEL_OPTIONS
from services.common.service_auth import PLAIN, ServiceSecurity
from services.runner.errors import StorageError
from services.runner.storage_stream import ItemRefused, PutItems, StreamBroken

CHUNK_BYTES = 1024 * 1024
# The most data PutObjectBytes takes (storage_service.proto); bigger objects are streamed.
SMALL_PUT_BYTES = 1024 * 1024
# StorageError.reason when storage could not be reached at all (output_store and
# input_upload wait for it, up to STORAGE_PATIENCE_S).
UNAVAILABLE = "STORAGE_UNAVAILABLE"
# Storage unreachable (restarting): keep trying this long before the workflow fails, so a
# short storage outage does not fail work (tests/faults/test_storage_faults.py).
STORAGE_PATIENCE_S = 30.0


def _storage_error(operation: str, key: str, err: grpc.aio.AioRpcError | ComfyfleetError) -> StorageError:
    cause = from_rpc_error(err) if isinstance(err, grpc.aio.AioRpcError) else err
    if cause.reason == "UNAVAILABLE":  # not reached at all (down, restarting): worth waiting for
        return StorageError(f"{operation} {key}: storage is unavailable", reason=UNAVAILABLE)
    return StorageError(f"{operation} {key}: {cause.message}")


@dataclass(frozen=True)
class StoredObject:
    ref: object_pb2.ObjectRef
    chunks: AsyncIterator[bytes]


class ObjectStore(Protocol):
    def get(self, key: str) -> contextlib.AbstractAsyncContextManager[StoredObject]: ...
    async def put(self, key: str, content_type: str, chunks: AsyncIterable[bytes]) -> object_pb2.ObjectRef: ...


async def _rechunk(chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    """Splits anything bigger than CHUNK_BYTES; skips empty chunks."""
    async for chunk in chunks:
        for start in range(0, len(chunk), CHUNK_BYTES):
            yield chunk[start : start + CHUNK_BYTES]


async def _chained(read: list[bytes], rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The chunks already `read`, then the `rest` of the same source."""
    for chunk in read:
        yield chunk
    async for chunk in rest:
        yield chunk


class StorageClient:
    """`ObjectStore` over a grpc.aio channel to `target`; `close()` it when done."""

    def __init__(self, target: str, security: ServiceSecurity = PLAIN) -> None:
        self._channel = security.channel(target, CHANNEL_OPTIONS)  # with the service token
        self._stub = storage_service_pb2_grpc.StorageServiceStub(self._channel)
        self._items = PutItems(self._stub)  # PutObjectsBytes, until storage answers UNIMPLEMENTED
        self._takes_put_bytes = True  # until storage answers PutObjectBytes with UNIMPLEMENTED

    async def close(self) -> None:
        await self._items.close()
        await self._channel.close()

    @contextlib.asynccontextmanager
    async def get(self, key: str) -> AsyncIterator[StoredObject]:
        call = self._stub.GetObject(storage_service_pb2.GetObjectRequest(key=key))
        try:
            first = await call.read()
            if first is grpc.aio.EOF or not first.HasField("object"):
                raise StorageError(f"GetObject {key}: the stream did not start with its ObjectRef")

            async def chunks() -> AsyncIterator[bytes]:
                try:
                    while True:
                        message = await call.read()
                        if message is grpc.aio.EOF:
                            return
                        if message.chunk:
                            yield message.chunk
                except grpc.aio.AioRpcError as err:
                    raise _storage_error("GetObject", key, err) from err

            yield StoredObject(ref=first.object, chunks=chunks())
        except grpc.aio.AioRpcError as err:
            raise _storage_error("GetObject", key, err) from err
        finally:
            call.cancel()

    async def put(self, key: str, content_type: str, chunks: AsyncIterable[bytes]) -> object_pb2.ObjectRef:
        header = storage_service_pb2.PutObjectHeader(key=key, content_type=content_type)
        source = aiter(_rechunk(chunks))
        read: list[bytes] = []
        size_bytes = 0
        async for chunk in source:
            read.append(chunk)
            size_bytes += len(chunk)
            if size_bytes > SMALL_PUT_BYTES:
                return await self._put_stream(header, _chained(read, source))
        request = storage_service_pb2.PutObjectBytesRequest(header=header, data=b"".join(read))
        if self._items.available:
            try:
                return await self._items.put(request)
            except ItemRefused as refused:
                raise _storage_error("PutObjectsBytes", key, refused.cause) from refused
            except StreamBroken:
                # Put again at once, as one call. Storage gone: the call fails as unavailable
                # (and the caller waits for it). An older storage service: PutObjectsBytes is
                # unknown to it, and from now on (`available` False) each object is one call;
                # grpc.aio may end such a stream INTERNAL rather than UNIMPLEMENTED while a put
                # is on its way, and the call then stores the object all the same.
                pass
        if self._takes_put_bytes:
            try:
                response = await self._stub.PutObjectBytes(request)
                return response.object
            except grpc.aio.AioRpcError as err:
                if err.code() != grpc.StatusCode.UNIMPLEMENTED:
                    raise _storage_error("PutObjectBytes", key, err) from err
                self._takes_put_bytes = False  # an older storage service: stream from now on
        return await self._put_stream(header, _chained(read, source))  # (`read` is the whole object)

    async def _put_stream(
        self, header: storage_service_pb2.PutObjectHeader, chunks: AsyncIterator[bytes]
    ) -> object_pb2.ObjectRef:
        # Explicit writes, so that a failing source (e.g. ComfyUI gone mid-download) raises
        # its own error here and the unfinished call is cancelled (nothing is stored).
        call = self._stub.PutObject()
        done = False
        try:
            await call.write(storage_service_pb2.PutObjectRequest(header=header))
            size_bytes = 0
            async for chunk in chunks:
                size_bytes += len(chunk)
                await call.write(storage_service_pb2.PutObjectRequest(chunk=chunk))
            # Without the finish storage keeps nothing (a cut stream is never stored truncated).
            finish = storage_service_pb2.PutObjectFinish(size_bytes=size_bytes)
            await call.write(storage_service_pb2.PutObjectRequest(finish=finish))
            await call.done_writing()
            response = await call
            done = True
        except grpc.aio.AioRpcError as err:
            raise _storage_error("PutObject", header.key, err) from err
        finally:
            if not done:
                call.cancel()
        return response.object
