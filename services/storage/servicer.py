"""StorageService over gRPC: translates proto messages to backend calls and back.

Every put hands the backend a stream of chunks: PutObject the chunks of its call, PutObjectBytes
its one message's data as a single chunk, and PutObjectsBytes each item's the same way
(put_items.py), so key rules, size limit and atomicity are the backend's one code path for all.

Signatures of download URLs are checked here, before the backend is touched; building and
checking them is signing.py's job, reading and writing bytes the backend's.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeAlias

import grpc
from comfyfleet.storage.v1 import object_pb2, storage_service_pb2, storage_service_pb2_grpc
from google.protobuf import timestamp_pb2

from services.common import logs
from services.common import url_signing as signing
from services.common.errors import InvalidArgument
from services.common.grpc_server import maps_domain_errors
from services.storage.backend import Backend, ObjectRef
from services.storage.config import MAX_URL_TTL_SECONDS
from services.storage.errors import ObjectNotFound, UrlExpired, UrlSignatureInvalid
from services.storage.put_items import serve_items

MAX_KEYS_PER_DELETE = 1000
# PutObjectBytes data limit: one PutObject chunk's worth (storage_service.proto).
MAX_PUT_BYTES_DATA = 1024 * 1024

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]


class StorageServicer(storage_service_pb2_grpc.StorageServiceServicer):
    """The StorageService RPCs over one backend."""

    def __init__(
        self,
        backend: Backend,
        *,
        signing_key: bytes,
        public_url: str,
        default_ttl_seconds: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._backend = backend
        self._signing_key = signing_key
        self._public_url = public_url
        self._default_ttl_seconds = default_ttl_seconds
        self._clock = clock
        self._stopping = asyncio.Event()

    @maps_domain_errors
    async def PutObject(
        self, request_iterator: AsyncIterator[storage_service_pb2.PutObjectRequest], context: Context
    ) -> storage_service_pb2.PutObjectResponse:
        requests = aiter(request_iterator)
        first = await anext(requests, None)
        if first is None or first.WhichOneof("part") != "header":
            raise InvalidArgument("a PutObject stream must start with a header", reason="PUT_HEADER_MISSING")
        header = first.header
        ref = await self._backend.put(
            header.key,
            _chunks(requests),
            content_type=header.content_type,
            max_size_bytes=header.max_size_bytes,
        )
        return storage_service_pb2.PutObjectResponse(object=_to_proto(ref))

    @maps_domain_errors
    async def PutObjectBytes(
        self, request: storage_service_pb2.PutObjectBytesRequest, context: Context
    ) -> storage_service_pb2.PutObjectBytesResponse:
        return storage_service_pb2.PutObjectBytesResponse(object=await self._put_bytes(request))

    async def PutObjectsBytes(
        self, requests: AsyncIterator[storage_service_pb2.PutObjectsBytesRequest], context: Context
    ) -> AsyncIterator[storage_service_pb2.PutObjectsBytesResponse]:
        async for answer in serve_items(requests, self._put_bytes, self._stopping, logs.request_id.get()):
            yield answer

    async def end_streams(self) -> None:
        """The service is stopping: PutObjectsBytes streams read no more items and end once
        the ones read are answered (so they do not hold up the drain)."""
        self._stopping.set()

    async def _put_bytes(self, request: storage_service_pb2.PutObjectBytesRequest) -> object_pb2.ObjectRef:
        data = request.data
        if len(data) > MAX_PUT_BYTES_DATA:
            raise InvalidArgument(
                f"PutObjectBytes takes at most {MAX_PUT_BYTES_DATA} bytes, not {len(data)}; stream with PutObject",
                reason="PUT_DATA_TOO_LARGE",
            )
        if request.sha256 and request.sha256 != hashlib.sha256(data).hexdigest():
            raise InvalidArgument("the request names another sha256 than its data", reason="PUT_SHA256_MISMATCH")
        header = request.header
        ref = await self._backend.put(
            header.key, _one_chunk(data), content_type=header.content_type, max_size_bytes=header.max_size_bytes
        )
        return _to_proto(ref)

    @maps_domain_errors
    async def GetObject(
        self, request: storage_service_pb2.GetObjectRequest, context: Context
    ) -> AsyncIterator[storage_service_pb2.GetObjectResponse]:
        if request.HasField("signature"):
            self._check_signature(request.key, request.signature)
        ref, chunks = await self._backend.get(
            request.key, offset_bytes=request.offset_bytes, length_bytes=request.length_bytes
        )
        async with contextlib.aclosing(chunks):
            yield storage_service_pb2.GetObjectResponse(object=_to_proto(ref))
            async for chunk in chunks:
                yield storage_service_pb2.GetObjectResponse(chunk=chunk)

    @maps_domain_errors
    async def DeleteObjects(
        self, request: storage_service_pb2.DeleteObjectsRequest, context: Context
    ) -> storage_service_pb2.DeleteObjectsResponse:
        if len(request.keys) > MAX_KEYS_PER_DELETE:
            raise InvalidArgument(f"at most {MAX_KEYS_PER_DELETE} keys per DeleteObjects call", reason="TOO_MANY_KEYS")
        deleted = await self._backend.delete(list(request.keys), prefix=request.prefix)
        return storage_service_pb2.DeleteObjectsResponse(deleted_count=deleted)

    @maps_domain_errors
    async def PresignObject(
        self, request: storage_service_pb2.PresignObjectRequest, context: Context
    ) -> storage_service_pb2.PresignObjectResponse:
        ttl_seconds = self._default_ttl_seconds
        if request.HasField("ttl"):
            ttl_seconds = math.ceil(request.ttl.ToTimedelta().total_seconds())
            if not 0 < ttl_seconds <= MAX_URL_TTL_SECONDS:
                raise InvalidArgument(
                    f"ttl must be more than 0 and at most {MAX_URL_TTL_SECONDS} seconds (7 days)",
                    reason="TTL_INVALID",
                )
        if not await self._backend.exists(request.key):
            raise ObjectNotFound(f"no object {request.key!r}")
        expires_unix = math.floor(self._clock()) + ttl_seconds
        url = await self._backend.presign(request.key, ttl_seconds)
        if url is None:  # the backend has no URLs of its own: the gateway serves a signed one
            signature = signing.sign(self._signing_key, request.key, expires_unix)
            url = signing.download_url(self._public_url, request.key, expires_unix, signature)
        return storage_service_pb2.PresignObjectResponse(
            url=url, expires_at=timestamp_pb2.Timestamp(seconds=expires_unix)
        )

    @maps_domain_errors
    async def GetUrlSigning(
        self, request: storage_service_pb2.GetUrlSigningRequest, context: Context
    ) -> storage_service_pb2.GetUrlSigningResponse:
        if self._backend.has_urls:  # URLs of the store itself: PresignObject makes them
            return storage_service_pb2.GetUrlSigningResponse()
        return storage_service_pb2.GetUrlSigningResponse(gateway=storage_service_pb2.GatewayUrlSigning(
            key=self._signing_key, public_url=self._public_url, ttl_seconds=self._default_ttl_seconds))

    def _check_signature(self, key: str, signature: storage_service_pb2.UrlSignature) -> None:
        verdict = signing.verify(
            self._signing_key, key, signature.expires_unix, signature.signature, now_unix=self._clock()
        )
        if verdict is signing.Verdict.INVALID:
            raise UrlSignatureInvalid("the download URL's signature is not valid")
        if verdict is signing.Verdict.EXPIRED:
            raise UrlExpired("the download URL has expired")


async def _chunks(requests: AsyncIterator[storage_service_pb2.PutObjectRequest]) -> AsyncIterator[bytes]:
    """The chunks of a PutObject stream, ending only at a finish that matches what arrived.

    Raising (rather than ending) makes the backend store nothing: a stream that ends without a
    finish (grpc.aio may end a cancelled call's iterator normally), or whose finish names
    another size or sha256, is refused before the backend commits.
    """
    size = 0
    hasher = hashlib.sha256()
    async for request in requests:
        part = request.WhichOneof("part")
        if part == "chunk":
            size += len(request.chunk)
            hasher.update(request.chunk)
            yield request.chunk
            continue
        if part != "finish":
            raise InvalidArgument("only the first PutObject message may be a header", reason="PUT_HEADER_REPEATED")
        finish = request.finish
        if finish.size_bytes != size:
            raise InvalidArgument(
                f"the finish says {finish.size_bytes} bytes but {size} arrived", reason="PUT_SIZE_MISMATCH"
            )
        if finish.sha256 and finish.sha256 != hasher.hexdigest():
            raise InvalidArgument("the finish names another sha256 than the bytes that arrived",
                                  reason="PUT_SHA256_MISMATCH")
        return
    raise InvalidArgument("the PutObject stream ended without a finish; nothing was stored",
                          reason="PUT_FINISH_MISSING")


async def _one_chunk(data: bytes) -> AsyncIterator[bytes]:
    """`data` as a chunk stream: one chunk, or none for an empty object."""
    if data:
        yield data


def _to_proto(ref: ObjectRef) -> object_pb2.ObjectRef:
    return object_pb2.ObjectRef(
        key=ref.key, size_bytes=ref.size_bytes, sha256=ref.sha256, content_type=ref.content_type
    )
