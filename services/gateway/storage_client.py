"""The gateway's view of StorageService: stream an upload, stream a download, delete, presign.

`Storage` is the small interface the routes use; `GrpcStorage` implements it over a
grpc.aio channel. Failed calls raise domain errors (services.gateway.errors.from_grpc).

Download URLs: with a local-directory backend the gateway signs them itself (url_signer.py,
with what GetUrlSigning gave). Otherwise (S3) PresignObject makes them, and a URL is reused
for the same key for a moment (`PRESIGN_REUSE_SECONDS`, at most 2% of its lifetime): one
workflow's output is presented by its `output` frame, the terminal `status` frame and often
GET /outputs right after, and each would otherwise wait on a PresignObject round trip. The
gateway's own deletes forget the URLs of what they deleted.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from typing import Protocol

import grpc
from comfyfleet.storage.v1 import object_pb2, storage_service_pb2, storage_service_pb2_grpc

from services.common.grpc_telemetry import outgoing_metadata
from services.gateway.errors import Unavailable, from_grpc
from services.gateway.url_signer import Signing, UrlSigner

MAX_CHUNK_BYTES = 1024 * 1024  # the PutObject contract: chunks of at most 1 MiB
RPC_TIMEOUT_SECONDS = 10.0
PRESIGN_REUSE_SECONDS = 2.0
PRESIGN_REUSE_SHARE = 0.02  # of the URL's lifetime: a reused URL keeps at least 98% of it
PRESIGN_CACHE_SIZE = 4096

ObjectRef = object_pb2.ObjectRef


class ObjectUpload(Protocol):
    """One object being stored; visible only after `finish` (which sends PutObject's finish)."""

    async def write(self, data: bytes) -> None: ...
    async def finish(self) -> ObjectRef: ...
    def abort(self) -> None: ...


class Storage(Protocol):
    """What the gateway needs from storage."""

    async def open_upload(self, key: str, content_type: str, max_size_bytes: int) -> ObjectUpload: ...
    async def open_download(
        self, key: str, expires_unix: int, signature: str
    ) -> tuple[ObjectRef, AsyncIterator[bytes]]: ...
    async def delete_prefix(self, prefix: str) -> int: ...
    async def presign(self, key: str) -> str: ...


class GrpcUpload:
    """A PutObject call: the header was sent; chunks go out as `write` is awaited."""

    def __init__(self, call: grpc.aio.StreamUnaryCall[storage_service_pb2.PutObjectRequest,
                                                      storage_service_pb2.PutObjectResponse]) -> None:
        self._call = call
        self._size_bytes = 0

    async def write(self, data: bytes) -> None:
        """Sends `data` in chunks of at most 1 MiB; waits for gRPC flow control."""
        view = memoryview(data)
        for offset in range(0, len(view), MAX_CHUNK_BYTES):
            await self._send(storage_service_pb2.PutObjectRequest(chunk=bytes(view[offset:offset + MAX_CHUNK_BYTES])))
        self._size_bytes += len(data)

    async def finish(self) -> ObjectRef:
        """Sends the finish (the object is kept only with it), half-closes, returns the stored object."""
        await self._send(storage_service_pb2.PutObjectRequest(
            finish=storage_service_pb2.PutObjectFinish(size_bytes=self._size_bytes)))
        try:
            await self._call.done_writing()
            response = await self._call
        except grpc.aio.AioRpcError as err:
            raise from_grpc(err, "storage") from None
        return response.object

    def abort(self) -> None:
        """Cancels the call: storage never makes the object visible."""
        self._call.cancel()

    async def _send(self, request: storage_service_pb2.PutObjectRequest) -> None:
        try:
            await self._call.write(request)
        except grpc.aio.AioRpcError as err:
            raise from_grpc(err, "storage") from None
        except asyncio.InvalidStateError:
            # The call ended already (storage refused the object): surface its status.
            try:
                await self._call
            except grpc.aio.AioRpcError as err:
                raise from_grpc(err, "storage") from None
            raise Unavailable("storage ended the upload early", reason="STORAGE_UPLOAD_ENDED") from None


class GrpcStorage:
    """Storage over a grpc.aio channel."""

    def __init__(self, channel: grpc.aio.Channel, *, presign_reuse_seconds: float = PRESIGN_REUSE_SECONDS,
                 clock: Callable[[], float] = time.monotonic, wall_clock: Callable[[], float] = time.time) -> None:
        self._stub = storage_service_pb2_grpc.StorageServiceStub(channel)
        self._reuse_seconds = presign_reuse_seconds
        self._clock = clock  # when a URL stops being reused
        self._wall_clock = wall_clock  # against the URL's expiry (unix seconds)
        self._urls: OrderedDict[str, tuple[float, str]] = OrderedDict()  # key -> (reusable until, url)
        self._signer = UrlSigner(self._url_signing, clock=clock, wall_clock=wall_clock)

    async def open_upload(self, key: str, content_type: str, max_size_bytes: int) -> GrpcUpload:
        call = self._stub.PutObject(metadata=outgoing_metadata())  # x-request-id (edge.py)
        upload = GrpcUpload(call)
        header = storage_service_pb2.PutObjectHeader(
            key=key, content_type=content_type, max_size_bytes=max_size_bytes
        )
        try:
            await upload._send(storage_service_pb2.PutObjectRequest(header=header))
        except BaseException:
            upload.abort()
            raise
        return upload

    async def open_download(
        self, key: str, expires_unix: int, signature: str
    ) -> tuple[ObjectRef, AsyncIterator[bytes]]:
        """Waits for the ObjectRef (so errors come before any byte), then streams chunks."""
        request = storage_service_pb2.GetObjectRequest(
            key=key,
            signature=storage_service_pb2.UrlSignature(expires_unix=expires_unix, signature=signature),
        )
        call = self._stub.GetObject(request)
        try:
            first = await call.read()
        except grpc.aio.AioRpcError as err:
            raise from_grpc(err, "storage") from None
        except BaseException:
            call.cancel()
            raise
        if not isinstance(first, storage_service_pb2.GetObjectResponse) or not first.HasField("object"):
            call.cancel()
            raise Unavailable("storage sent no object header", reason="STORAGE_PROTOCOL")
        return first.object, _chunks(call)

    async def delete_prefix(self, prefix: str) -> int:
        try:
            response = await self._stub.DeleteObjects(
                storage_service_pb2.DeleteObjectsRequest(prefix=prefix), timeout=RPC_TIMEOUT_SECONDS
            )
        except grpc.aio.AioRpcError as err:
            raise from_grpc(err, "storage") from None
        finally:
            for key in [k for k in self._urls if k.startswith(prefix)]:
                del self._urls[key]
        return response.deleted_count

    async def presign(self, key: str) -> str:
        signed = await self._signer.sign(key)
        if signed is not None:
            return signed
        cached = self._urls.get(key)
        if cached is not None and self._clock() < cached[0]:
            return cached[1]
        try:
            response = await self._stub.PresignObject(
                storage_service_pb2.PresignObjectRequest(key=key), timeout=RPC_TIMEOUT_SECONDS
            )
        except grpc.aio.AioRpcError as err:
            raise from_grpc(err, "storage") from None
        lifetime = response.expires_at.seconds - self._wall_clock() if response.HasField("expires_at") else 0.0
        reuse = min(self._reuse_seconds, PRESIGN_REUSE_SHARE * lifetime)
        if reuse > 0:
            self._urls[key] = (self._clock() + reuse, response.url)
            self._urls.move_to_end(key)
            while len(self._urls) > PRESIGN_CACHE_SIZE:
                self._urls.popitem(last=False)
        return response.url

    async def _url_signing(self) -> Signing | None:
        """What signs download URLs, or None when storage makes them itself (S3) or is older
        than GetUrlSigning."""
        try:
            response = await self._stub.GetUrlSigning(
                storage_service_pb2.GetUrlSigningRequest(), timeout=RPC_TIMEOUT_SECONDS
            )
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.UNIMPLEMENTED:
                return None
            raise
        return response.gateway if response.HasField("gateway") else None


async def _chunks(
    call: grpc.aio.UnaryStreamCall[storage_service_pb2.GetObjectRequest, storage_service_pb2.GetObjectResponse],
) -> AsyncIterator[bytes]:
    try:
        while True:
            message = await call.read()
            if not isinstance(message, storage_service_pb2.GetObjectResponse):
                return
            if message.HasField("chunk"):
                yield message.chunk
    except grpc.aio.AioRpcError as err:
        raise from_grpc(err, "storage") from None
    finally:
        call.cancel()
