"""The storage service's Prometheus metrics, counted by a wrapper around the backend.

    comfyfleet_storage_upload_bytes_total          bytes of objects stored (completed puts)
    comfyfleet_storage_download_bytes_total        bytes read out (GetObject streams)
    comfyfleet_storage_objects_deleted_total       objects deleted
    comfyfleet_storage_errors_total{operation, error}
        a backend call that raised: `error` is the exception's class (ObjectNotFound,
        ObjectTooLarge, S3Error, ...), so client mistakes and store failures can be told apart

`MeteredBackend` is a Backend (backend.py) in front of another; server.py puts it in front
of the configured one. The gRPC latency of each RPC comes from services/common/grpc_telemetry.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable

from prometheus_client import Counter

from services.storage.backend import DEFAULT_CONTENT_TYPE, Backend, ChunkStream, ObjectRef

UPLOAD_BYTES = Counter("comfyfleet_storage_upload_bytes", "Bytes of objects stored (completed puts)")
DOWNLOAD_BYTES = Counter("comfyfleet_storage_download_bytes", "Bytes read out of stored objects")
DELETED = Counter("comfyfleet_storage_objects_deleted", "Objects deleted")
ERRORS = Counter("comfyfleet_storage_errors", "Backend calls that raised, by operation and error",
                 ["operation", "error"])


class MeteredBackend:
    """Counts bytes and errors of every call, then does what `inner` does."""

    def __init__(self, inner: Backend) -> None:
        self._inner = inner

    @property
    def has_urls(self) -> bool:
        return self._inner.has_urls

    async def put(self, key: str, chunks: AsyncIterable[bytes], *, content_type: str = DEFAULT_CONTENT_TYPE,
                  max_size_bytes: int = 0) -> ObjectRef:
        try:
            ref = await self._inner.put(key, chunks, content_type=content_type, max_size_bytes=max_size_bytes)
        except Exception as err:
            ERRORS.labels("put", type(err).__name__).inc()
            raise
        UPLOAD_BYTES.inc(ref.size_bytes)
        return ref

    async def get(self, key: str, *, offset_bytes: int = 0, length_bytes: int = 0) -> tuple[ObjectRef, ChunkStream]:
        try:
            ref, chunks = await self._inner.get(key, offset_bytes=offset_bytes, length_bytes=length_bytes)
        except Exception as err:
            ERRORS.labels("get", type(err).__name__).inc()
            raise
        return ref, _CountedStream(chunks)

    async def stat(self, key: str) -> ObjectRef | None:
        try:
            return await self._inner.stat(key)
        except Exception as err:
            ERRORS.labels("stat", type(err).__name__).inc()
            raise

    async def exists(self, key: str) -> bool:
        try:
            return await self._inner.exists(key)
        except Exception as err:
            ERRORS.labels("exists", type(err).__name__).inc()
            raise

    async def delete(self, keys: Iterable[str] = (), *, prefix: str = "") -> int:
        try:
            deleted = await self._inner.delete(keys, prefix=prefix)
        except Exception as err:
            ERRORS.labels("delete", type(err).__name__).inc()
            raise
        DELETED.inc(deleted)
        return deleted

    async def presign(self, key: str, ttl_seconds: int) -> str | None:
        try:
            return await self._inner.presign(key, ttl_seconds)
        except Exception as err:
            ERRORS.labels("presign", type(err).__name__).inc()
            raise

    async def close(self) -> None:
        await self._inner.close()


class _CountedStream:
    """A ChunkStream that counts the bytes read through it and the error that ends it."""

    def __init__(self, inner: ChunkStream) -> None:
        self._inner = inner

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        try:
            chunk = await self._inner.__anext__()
        except StopAsyncIteration:
            raise
        except Exception as err:
            ERRORS.labels("get", type(err).__name__).inc()
            raise
        DOWNLOAD_BYTES.inc(len(chunk))
        return chunk

    async def aclose(self) -> None:
        await self._inner.aclose()
