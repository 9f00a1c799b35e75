"""Adapter: the few storage calls the scheduler makes: deleting objects it no longer needs, and
copying the input files a rerun reuses (streamed through, never held whole)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Protocol

import grpc
from comfyfleet.storage.v1 import object_pb2, storage_service_pb2, storage_service_pb2_grpc

from services.common.errors import ComfyfleetError, Unavailable, from_rpc_error
from services.common.grpc_server import CHANNEL_OPTIONS
from services.common.service_auth import PLAIN, ServiceSecurity

log = logging.getLogger(__name__)


class ObjectStore(Protocol):
    """What the scheduler needs from storage."""

    async def delete_prefix(self, prefix: str) -> int: ...
    async def copy(self, source: str, target: str) -> object_pb2.ObjectRef: ...


class StorageClient:
    def __init__(self, address: str, security: ServiceSecurity = PLAIN) -> None:
        self._channel = security.channel(address, CHANNEL_OPTIONS)  # with the service token
        self._stub = storage_service_pb2_grpc.StorageServiceStub(self._channel)

    async def delete_prefix(self, prefix: str) -> int:
        try:
            reply = await self._stub.DeleteObjects(storage_service_pb2.DeleteObjectsRequest(prefix=prefix), timeout=30)
        except grpc.aio.AioRpcError as err:
            raise _domain(err) from None
        return int(reply.deleted_count)

    async def copy(self, source: str, target: str) -> object_pb2.ObjectRef:
        """Streams object `source` into a new object `target`; returns the new object."""
        download = self._stub.GetObject(storage_service_pb2.GetObjectRequest(key=source), timeout=300)
        try:
            first = await download.read()
        except grpc.aio.AioRpcError as err:
            raise _domain(err) from None
        if not isinstance(first, storage_service_pb2.GetObjectResponse) or not first.HasField("object"):
            download.cancel()
            raise Unavailable("storage sent no object header", reason="STORAGE_PROTOCOL")

        async def requests() -> AsyncIterator[storage_service_pb2.PutObjectRequest]:
            yield storage_service_pb2.PutObjectRequest(header=storage_service_pb2.PutObjectHeader(
                key=target, content_type=first.object.content_type))
            size = 0
            while isinstance(message := await download.read(), storage_service_pb2.GetObjectResponse):
                if message.HasField("chunk"):
                    size += len(message.chunk)
                    yield storage_service_pb2.PutObjectRequest(chunk=message.chunk)
            # storage keeps the copy only if it got exactly the source's bytes
            yield storage_service_pb2.PutObjectRequest(finish=storage_service_pb2.PutObjectFinish(
                size_bytes=size, sha256=first.object.sha256))

        try:
            reply = await self._stub.PutObject(requests(), timeout=300)
        except grpc.aio.AioRpcError as err:
            raise _domain(err) from None
        finally:
            download.cancel()
        return reply.object

    async def close(self) -> None:
        await self._channel.close()


def _domain(err: grpc.aio.AioRpcError) -> ComfyfleetError:
    """Storage's error as a domain error; transport failures say "storage", not an address."""
    domain = from_rpc_error(err)
    if isinstance(domain, Unavailable):
        return Unavailable("storage is unavailable", reason="STORAGE_UNAVAILABLE")
    return domain
