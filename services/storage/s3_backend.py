"""The `s3` backend: objects in one bucket of MinIO or any S3-compatible store, via the minio SDK.

    bucket                      created at start when missing
    object metadata             Content-Type, also as x-amz-meta-content-type (which wins: some
                                stores rewrite Content-Type); x-amz-meta-sha256 for one-PUT objects
    object tag "sha256"         for multipart objects (their hash is known only at the end)

A put reads up to one part from the stream. If the stream ends (with its finish) within it,
the object goes up in one PUT with its sha256 in the metadata. Otherwise the bytes flow
through a bounded pipe into `put_object(length=-1, part_size=...)` running in a worker
thread: a multipart upload holding about (parallel parts + 1) parts in memory, never the
whole object; the sha256 becomes a tag once the upload completed. When the stream fails (too
large, no finish, client gone), the pipe makes minio's read raise, minio aborts the multipart
upload, and nothing becomes visible.
Puts of one key are serialised in this process, so bytes and their tag always agree.
Reads stat first and then GET with If-Match on that ETag, so the ref describes the bytes.

Every minio call blocks; all of them run in this backend's own thread pool, never on the loop
(long uploads would otherwise starve asyncio's default pool).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import logging
from collections.abc import AsyncIterable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any, BinaryIO, TypeVar, cast

import urllib3
from minio import Minio
from minio.commonconfig import Tags
from minio.deleteobjects import DeleteObject
from minio.error import InvalidResponseError, MinioException, S3Error

from services.common.errors import ComfyfleetError, Conflict, Unavailable
from services.storage.backend import (
    DEFAULT_CONTENT_TYPE,
    ChunkStream,
    ObjectRef,
    validate_content_type,
    validate_key,
    validate_max_size,
    validate_prefix,
    validate_range,
)
from services.storage.config import S3Settings
from services.storage.errors import ObjectNotFound, ObjectTooLarge, RangeNotSatisfiable
from services.storage.local_files import KeyLocks
from services.storage.s3_streams import ResponseChunks, UploadAborted, UploadPipe

log = logging.getLogger(__name__)

MAX_THREADS = 64
MAX_CONNECTIONS = 64
DELETE_BATCH = 1000
SHA256_META = "x-amz-meta-sha256"
CONTENT_TYPE_META = "x-amz-meta-content-type"  # some stores sniff Content-Type (SeaweedFS: empty objects)
_MISSING = frozenset({"NoSuchKey", "NoSuchObject", "NotFound", "ResourceNotFound"})
_T = TypeVar("_T")


class S3Backend:
    """A Backend over one S3 bucket; build it with `await S3Backend.open(settings)`."""

    has_urls = True  # presigned S3 URLs

    def __init__(self, settings: S3Settings) -> None:
        self._settings = settings
        self._bucket = settings.bucket
        self._part_size = settings.part_size_bytes
        self._http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=5.0, read=60.0),
            maxsize=MAX_CONNECTIONS,
            retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
        )
        self._client = Minio(
            settings.endpoint,
            access_key=settings.access_key,
            secret_key=settings.secret_key,
            secure=settings.secure,
            region=settings.region,
            http_client=self._http,
        )
        # Presigning is offline (the region is given); the host is part of the signature, so
        # URLs are signed for the address clients use.
        self._presigner = Minio(
            settings.public_endpoint or settings.endpoint,
            access_key=settings.access_key,
            secret_key=settings.secret_key,
            secure=settings.secure if settings.public_secure is None else settings.public_secure,
            region=settings.region,
        )
        self._executor = ThreadPoolExecutor(max_workers=MAX_THREADS, thread_name_prefix="s3")
        self._locks = KeyLocks()

    @classmethod
    async def open(cls, settings: S3Settings) -> S3Backend:
        backend = cls(settings)
        try:
            await backend._run(backend._ensure_bucket)
        except BaseException:
            await backend.close()
            raise
        return backend

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._http.clear()

    # -- put --------------------------------------------------------------------------------

    async def put(
        self,
        key: str,
        chunks: AsyncIterable[bytes],
        *,
        content_type: str = DEFAULT_CONTENT_TYPE,
        max_size_bytes: int = 0,
    ) -> ObjectRef:
        validate_key(key)
        content_type = validate_content_type(content_type)
        validate_max_size(max_size_bytes)
        async with self._locks.hold(key):
            return await self._put(key, aiter(chunks), content_type, max_size_bytes)

    async def _put(self, key: str, stream: Any, content_type: str, max_size_bytes: int) -> ObjectRef:
        def counted(size: int) -> int:
            if max_size_bytes and size > max_size_bytes:
                raise ObjectTooLarge(f"object {key!r} is larger than the limit of {max_size_bytes} bytes")
            return size

        first: list[bytes] = []
        size = 0
        async for chunk in stream:
            size = counted(size + len(chunk))
            first.append(chunk)
            if size > self._part_size:
                break
        else:  # the whole object fits in one part
            sha256 = await self._run(self._put_whole, key, first, content_type)
            return ObjectRef(key, size, sha256, content_type)

        loop = asyncio.get_running_loop()
        pipe = UploadPipe(loop)
        upload = loop.run_in_executor(self._executor, self._put_streamed, key, pipe, content_type)
        upload.add_done_callback(lambda _: pipe.reader_gone())
        try:
            accepted = True
            for chunk in first:
                accepted = accepted and await pipe.send(chunk)
            first.clear()
            if accepted:
                async for chunk in stream:
                    size = counted(size + len(chunk))
                    if not await pipe.send(chunk):
                        break  # the upload failed; awaiting it below raises why
            pipe.end()
        except BaseException:
            pipe.abort()
            await asyncio.wait([upload])
            if not upload.cancelled():
                upload.exception()  # UploadAborted, expected: the stream's own error wins
            raise
        await self._translated(upload)
        ref = ObjectRef(key, pipe.size_bytes, pipe.hasher.hexdigest(), content_type)
        try:
            await self._run(self._client.set_object_tags, self._bucket, key, _sha256_tags(ref.sha256))
        except BaseException:
            with contextlib.suppress(Exception):  # best effort: never leave bytes without their hash
                await self._run(self._client.remove_object, self._bucket, key)
            raise
        return ref

    def _put_whole(self, key: str, chunks: list[bytes], content_type: str) -> str:
        data = b"".join(chunks)
        chunks.clear()
        sha256 = hashlib.sha256(data).hexdigest()
        self._client.put_object(
            self._bucket, key, io.BytesIO(data), len(data),
            content_type=content_type, metadata={SHA256_META: sha256, CONTENT_TYPE_META: content_type},
        )
        return sha256

    def _put_streamed(self, key: str, pipe: UploadPipe, content_type: str) -> None:
        try:
            self._client.put_object(
                self._bucket, key, cast(BinaryIO, pipe), -1, part_size=self._part_size, content_type=content_type,
                metadata={CONTENT_TYPE_META: content_type}, num_parallel_uploads=self._settings.parallel_parts,
            )
        except UploadAborted:
            log.info("upload of %r aborted; nothing stored", key)
            raise

    # -- get / stat -------------------------------------------------------------------------

    async def get(self, key: str, *, offset_bytes: int = 0, length_bytes: int = 0) -> tuple[ObjectRef, ChunkStream]:
        validate_key(key)
        validate_range(offset_bytes, length_bytes)
        found = await self._run(self._stat, key)
        if found is None:
            raise ObjectNotFound(f"no object {key!r}")
        ref, etag = found
        if offset_bytes > ref.size_bytes:
            raise RangeNotSatisfiable(f"offset {offset_bytes} is past the end of {key!r} ({ref.size_bytes} bytes)")
        end = ref.size_bytes if not length_bytes else min(ref.size_bytes, offset_bytes + length_bytes)
        if end == offset_bytes:
            return ref, ResponseChunks(None, 0, self._executor)
        response = await self._run(
            self._client.get_object, self._bucket, key, offset_bytes, end - offset_bytes, {"If-Match": etag}
        )
        return ref, ResponseChunks(response, end - offset_bytes, self._executor, _domain_error)

    async def stat(self, key: str) -> ObjectRef | None:
        validate_key(key)
        found = await self._run(self._stat, key)
        return None if found is None else found[0]

    async def exists(self, key: str) -> bool:
        return await self.stat(key) is not None

    def _stat(self, key: str) -> tuple[ObjectRef, str] | None:
        try:
            info = self._client.stat_object(self._bucket, key)
        except S3Error as err:
            if err.code in _MISSING:
                return None
            raise
        headers: Any = info.metadata or {}  # urllib3's HTTPHeaderDict: case-insensitive
        sha256 = headers.get(SHA256_META, "")
        if not sha256:
            tags = self._client.get_object_tags(self._bucket, key)
            sha256 = tags.get("sha256", "") if tags is not None else ""
        content_type = headers.get(CONTENT_TYPE_META) or info.content_type or DEFAULT_CONTENT_TYPE
        return ObjectRef(key, int(info.size or 0), str(sha256), content_type), str(info.etag)

    # -- delete and URLs --------------------------------------------------------------------

    async def delete(self, keys: Iterable[str] = (), *, prefix: str = "") -> int:
        targets = set(keys)
        for key in targets:
            validate_key(key)
        if prefix:
            validate_prefix(prefix)
        return await self._run(self._delete, targets, prefix)

    def _delete(self, keys: set[str], prefix: str) -> int:
        existing = {key for key in keys if self._stat_exists(key)}
        if prefix:
            listed = self._client.list_objects(self._bucket, prefix=prefix, recursive=True)
            existing.update(str(item.object_name) for item in listed if item.object_name)
        names = sorted(existing)
        for start in range(0, len(names), DELETE_BATCH):
            batch = [DeleteObject(name) for name in names[start : start + DELETE_BATCH]]
            errors = list(self._client.remove_objects(self._bucket, batch))
            if errors:
                raise Unavailable(f"the object store did not delete {len(errors)} objects: {errors[0].message}",
                                  reason="S3_DELETE_FAILED")
        return len(names)

    def _stat_exists(self, key: str) -> bool:
        try:
            self._client.stat_object(self._bucket, key)
        except S3Error as err:
            if err.code in _MISSING:
                return False
            raise
        return True

    async def presign(self, key: str, ttl_seconds: int) -> str | None:
        """An S3 presigned GET URL for `key`, valid for `ttl_seconds`."""
        validate_key(key)
        return await self._run(
            self._presigner.presigned_get_object, self._bucket, key, timedelta(seconds=ttl_seconds)
        )

    # -- plumbing ---------------------------------------------------------------------------

    def _ensure_bucket(self) -> None:
        if not self._client.bucket_exists(self._bucket):
            with contextlib.suppress(S3Error):  # another storage replica made it meanwhile
                self._client.make_bucket(self._bucket)
            if not self._client.bucket_exists(self._bucket):
                raise Unavailable(f"cannot create the bucket {self._bucket!r}", reason="S3_BUCKET_MISSING")
            log.info("created bucket %r", self._bucket)

    async def _run(self, fn: Callable[..., _T], *args: Any) -> _T:
        future = asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        return await self._translated(future)

    async def _translated(self, future: asyncio.Future[_T]) -> _T:
        try:
            return await future
        except ComfyfleetError:
            raise
        except (S3Error, InvalidResponseError, MinioException, urllib3.exceptions.HTTPError, OSError) as err:
            raise _domain_error(err) from err


def _domain_error(err: Exception) -> ComfyfleetError:
    if isinstance(err, S3Error):
        if err.code in _MISSING:
            return ObjectNotFound(f"no object {err.object_name!r}")
        if err.code == "PreconditionFailed":
            return Conflict("the object changed while it was being read; read it again", reason="OBJECT_CHANGED")
        return Unavailable(f"the object store refused: {err.code}: {err.message}", reason="S3_ERROR")
    return Unavailable(f"the object store is unreachable: {type(err).__name__}", reason="S3_UNAVAILABLE")


def _sha256_tags(sha256: str) -> Tags:
    tags = Tags.new_object_tags()
    tags["sha256"] = sha256
    return tags

