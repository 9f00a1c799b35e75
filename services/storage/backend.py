"""The interface a storage backend implements, and the rules every backend shares.

A backend stores whole objects under string keys. It validates keys itself (with
`validate_key` plus any rules of its own), counts and hashes bytes while they stream, and
never exposes a partial object: a put is visible only once it completed, and a put that fails
or is cancelled leaves nothing behind. The same contract tests (tests/storage/contract.py)
run against every backend.

Key rules (all backends): not empty, at most 1024 UTF-8 bytes, no leading "/", no backslash,
no control characters (NUL included), no empty, "." or ".." segments.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from typing import Protocol

from services.common.errors import InvalidArgument
from services.storage.errors import InvalidKey

DEFAULT_CONTENT_TYPE = "application/octet-stream"
MAX_KEY_BYTES = 1024
MAX_CONTENT_TYPE_CHARS = 255
READ_CHUNK_BYTES = 1024 * 1024


@dataclasses.dataclass(frozen=True, slots=True)
class ObjectRef:
    """A stored object: its key, size, lowercase hex sha256 and MIME type."""

    key: str
    size_bytes: int
    sha256: str
    content_type: str


class ChunkStream(Protocol):
    """The bytes of one read, in chunks of at most READ_CHUNK_BYTES; close it when done early."""

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def __anext__(self) -> bytes: ...

    async def aclose(self) -> None: ...


class Backend(Protocol):
    """What the servicer needs from a place that keeps object bytes."""

    @property
    def has_urls(self) -> bool:
        """Whether `presign` gives URLs of the store itself (S3); False: the service signs
        gateway URLs, and tells the gateway how (GetUrlSigning)."""
        ...

    async def put(
        self,
        key: str,
        chunks: AsyncIterable[bytes],
        *,
        content_type: str = DEFAULT_CONTENT_TYPE,
        max_size_bytes: int = 0,
    ) -> ObjectRef:
        """Stores the chunks as one object, replacing any object under `key`, all or nothing.

        Raises InvalidKey, InvalidArgument, ObjectTooLarge (more than `max_size_bytes`,
        0 = no limit), StorageFull, KeyConflict.
        """
        ...

    async def get(self, key: str, *, offset_bytes: int = 0, length_bytes: int = 0) -> tuple[ObjectRef, ChunkStream]:
        """The whole object's ref and the bytes of [offset, offset + length) (length 0 = to the end).

        Raises InvalidKey, ObjectNotFound, RangeNotSatisfiable (offset past the end).
        """
        ...

    async def stat(self, key: str) -> ObjectRef | None:
        """The object's ref, or None when there is no object under `key`."""
        ...

    async def exists(self, key: str) -> bool:
        """Whether an object is stored under `key`."""
        ...

    async def delete(self, keys: Iterable[str] = (), *, prefix: str = "") -> int:
        """Deletes the given keys and every key under `prefix` (ends with "/"); returns how many existed."""
        ...

    async def presign(self, key: str, ttl_seconds: int) -> str | None:
        """A download URL of the store itself (e.g. S3 presigned), or None when the store has none
        and the service signs a gateway URL instead."""
        ...

    async def close(self) -> None:
        """Releases what the backend holds."""
        ...


def validate_key(key: str, *, what: str = "key") -> None:
    """Raises InvalidKey when `key` breaks the shared key rules."""
    if not key:
        raise InvalidKey(f"{what} must not be empty")
    shown = repr(key[:80]) + ("..." if len(key) > 80 else "")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidKey(f"{what} {shown} is not valid UTF-8") from None
    if size > MAX_KEY_BYTES:
        raise InvalidKey(f"{what} {shown} is {size} bytes long; the limit is {MAX_KEY_BYTES}")
    if key.startswith("/"):
        raise InvalidKey(f"{what} {shown} must not start with '/'")
    if "\\" in key:
        raise InvalidKey(f"{what} {shown} must not contain a backslash")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in key):
        raise InvalidKey(f"{what} {shown} must not contain control characters (NUL included)")
    if any(segment in ("", ".", "..") for segment in key.split("/")):
        raise InvalidKey(f"{what} {shown} must not contain empty, '.' or '..' segments")


def validate_prefix(prefix: str) -> None:
    """Raises InvalidKey unless `prefix` is a valid key followed by "/"."""
    if not prefix.endswith("/"):
        raise InvalidKey(f"prefix {prefix[:80]!r} must end with '/'")
    validate_key(prefix[:-1], what="prefix")


def validate_content_type(content_type: str) -> str:
    """The content type to record (the default when empty); rejects ones unsafe in an HTTP header."""
    if not content_type:
        return DEFAULT_CONTENT_TYPE
    if len(content_type) > MAX_CONTENT_TYPE_CHARS or not all(0x20 <= ord(c) < 0x7F for c in content_type):
        raise InvalidArgument(
            f"content_type must be at most {MAX_CONTENT_TYPE_CHARS} printable ASCII characters",
            reason="CONTENT_TYPE_INVALID",
        )
    return content_type


def validate_range(offset_bytes: int, length_bytes: int) -> None:
    """Rejects negative offsets and lengths."""
    if offset_bytes < 0 or length_bytes < 0:
        raise InvalidArgument("offset_bytes and length_bytes must not be negative", reason="RANGE_INVALID")


def validate_max_size(max_size_bytes: int) -> None:
    """Rejects a negative size limit (0 means no limit)."""
    if max_size_bytes < 0:
        raise InvalidArgument("max_size_bytes must not be negative (0 = no limit)", reason="MAX_SIZE_INVALID")
