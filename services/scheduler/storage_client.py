"""Adapter: the few storage calls the scheduler makes (deleting objects it no longer needs)."""

from __future__ import annotations

import logging

import grpc
from comfyfleet.storage.v1 import storage_service_pb2, storage_service_pb2_grpc

from services.common.grpc_server import CHANNEL_OPTIONS

log = logging.getLogger(__name__)


class StorageClient:
    def __init__(self, address: str) -> None:
        self._channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        self._stub = storage_service_pb2_grpc.StorageServiceStub(self._channel)

    async def delete_prefix(self, prefix: str) -> int:
        reply = await self._stub.DeleteObjects(storage_service_pb2.DeleteObjectsRequest(prefix=prefix), timeout=30)
        return int(reply.deleted_count)

    async def close(self) -> None:
        await self._channel.close()
