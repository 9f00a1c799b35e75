"""The `local` backend: objects as files under one directory (STORAGE_LOCAL_DIR).

    <root>/data/<key>              the object's bytes, its metadata in an xattr of the file
    <root>/data/<key>.meta.json    or in a sidecar (local_meta.py: which, and why)
    <root>/tmp/*.tmp               writes in flight; nothing else ever lives here

A put of up to SMALL_OBJECT_BYTES (most outputs) is received in memory and stored by one
worker-thread call under the key's lock; a larger one streams into a temp file under tmp/
(same filesystem as data/, checked at start), hashing and counting as it goes, and is fsynced
before it takes the lock. Either way the commit is the same. With xattrs: the metadata set on
the temp file before its fsync, the temp moved into place with os.replace, a stale sidecar of
an older object at the key unlinked, the directory fsynced. Without: the bytes' temp fsynced,
a sidecar temp written and fsynced, bytes moved into place, sidecar moved into place,
directory fsynced. Either way, then, each directory made for the key is named durably in its
parent (local_files.DurableDirs). Commits and deletes of one key are serialised by an
in-process lock, so concurrent puts leave one whole object.
A reader opens the bytes first and reads the xattr from that open file; when there is none it
trusts the sidecar only when it names that file's inode. Either must give the file's size (a
torn write); otherwise the reader re-reads under the key's lock and rebuilds the metadata from
the bytes, keeping the recorded content type. Listing and deletes handle both layouts, mixed.
Temps left by a crash are removed at start. One storage process owns a directory: the locks
are not shared between processes.

The local backend reserves key segments ending in ".meta.json" and caps each segment at 245
bytes (255 minus the sidecar suffix); a key cannot be both an object and a prefix of one.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import hashlib
import logging
import os
import stat
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from pathlib import Path
from typing import IO

from services.storage.backend import (
    DEFAULT_CONTENT_TYPE,
    READ_CHUNK_BYTES,
    ChunkStream,
    ObjectRef,
    validate_content_type,
    validate_key,
    validate_max_size,
    validate_prefix,
    validate_range,
)
from services.storage.errors import (
    InvalidKey,
    KeyConflict,
    ObjectNotFound,
    ObjectTooLarge,
    RangeNotSatisfiable,
    SettingsError,
    StorageFull,
)
from services.storage.local_files import (
    DurableDirs,
    FileChunks,
    KeyLocks,
    Spill,
    Writers,
    create_temp,
    fsync_dir,
    run_whole,
    write_chunks,
    write_temp,
)
from services.storage.local_meta import (
    META_SUFFIX,
    META_XATTR,
    described,
    meta_path,
    recorded_content_type,
    rewrite,
    seal,
    xattrs_supported,
)

log = logging.getLogger(__name__)

MAX_SEGMENT_BYTES = 255 - len(META_SUFFIX)
WRITE_BATCH_BYTES = 1024 * 1024
SMALL_OBJECT_BYTES = 256 * 1024  # a put up to this size is received in memory, stored in one worker call
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


@dataclasses.dataclass(slots=True)
class _Head:
    """The first bytes of a put, held in memory; `complete` when the stream ended within them."""

    chunks: list[bytes]
    size_bytes: int
    complete: bool


async def _read_head(key: str, max_size_bytes: int, stream: AsyncIterator[bytes]) -> _Head:
    """Reads the stream until it ends or holds more than SMALL_OBJECT_BYTES, whichever comes first."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in stream:
        size += len(chunk)
        _check_size(key, size, max_size_bytes)
        chunks.append(chunk)
        if size > SMALL_OBJECT_BYTES:
            return _Head(chunks, size, complete=False)
    return _Head(chunks, size, complete=True)


def _check_size(key: str, size: int, max_size_bytes: int) -> None:
    if max_size_bytes and size > max_size_bytes:
        raise ObjectTooLarge(f"object {key!r} is larger than the limit of {max_size_bytes} bytes")


# Threads for small puts' file work (local_files.Writers): with 2, the fsyncs of a busy fleet's
# puts queued behind each other (bench.throughput 281-290 /s); 3 gave 294-296 /s, 4 no more.
WRITER_THREADS = 3


class LocalBackend:
    """A Backend over a local directory; build it with `await LocalBackend.open(root)`.

    `use_xattrs`: keep metadata in extended attributes (True) or sidecars (False); None finds
    out at open whether the filesystem takes user xattrs.
    """

    has_urls = False  # the service signs gateway URLs (url_signing.py)

    def __init__(self, root: Path, *, use_xattrs: bool | None = None) -> None:
        self._data = root / "data"
        self._tmp = root / "tmp"
        self._locks = KeyLocks()
        self._dirs = DurableDirs(self._data)
        self._writers = Writers(WRITER_THREADS)
        self._detect_xattrs = use_xattrs is None
        self._xattrs = bool(use_xattrs)

    @classmethod
    async def open(cls, root: Path, *, use_xattrs: bool | None = None) -> LocalBackend:
        backend = cls(root, use_xattrs=use_xattrs)
        await asyncio.to_thread(backend._prepare)
        return backend

    async def close(self) -> None:
        """Stops the writer threads once their jobs ran (every file is closed by the call that
        opened it)."""
        await asyncio.to_thread(self._writers.close)

    async def presign(self, key: str, ttl_seconds: int) -> str | None:
        """None: a directory has no URLs; the service signs gateway URLs (signing.py)."""
        return None

    # -- put --------------------------------------------------------------------------------

    async def put(
        self,
        key: str,
        chunks: AsyncIterable[bytes],
        *,
        content_type: str = DEFAULT_CONTENT_TYPE,
        max_size_bytes: int = 0,
    ) -> ObjectRef:
        self._check_key(key)
        content_type = validate_content_type(content_type)
        validate_max_size(max_size_bytes)
        stream = aiter(chunks)
        head = await _read_head(key, max_size_bytes, stream)
        try:
            if head.complete:
                async with self._locks.hold(key):
                    return await self._writers.run(self._store_whole, key, b"".join(head.chunks), content_type)
            return await self._put_streamed(key, content_type, max_size_bytes, head, stream)
        except OSError as err:
            if err.errno in _DISK_FULL:
                raise StorageFull(f"cannot store {key!r}: the storage disk or quota is full") from err
            raise

    async def _put_streamed(
        self, key: str, content_type: str, max_size_bytes: int, head: _Head, rest: AsyncIterator[bytes]
    ) -> ObjectRef:
        """A put too large to hold in memory: streamed into a temp file, fsynced, then committed."""
        spill = Spill()
        committed = False
        try:
            file, temp = await run_whole(self._open_temp, key, spill)
            ref, sidecar = await self._receive(key, content_type, max_size_bytes, head, rest, file)
            async with self._locks.hold(key):
                await run_whole(self._commit, key, temp, sidecar)
                committed = True
            return ref
        finally:
            if spill.opened and not committed:
                # shielded: a second cancellation (the call ending while this cleanup waits
                # for a thread) must not leave the temp file behind
                await run_whole(spill.discard)

    async def _receive(
        self,
        key: str,
        content_type: str,
        max_size_bytes: int,
        head: _Head,
        rest: AsyncIterator[bytes],
        file: IO[bytes],
    ) -> tuple[ObjectRef, bytes | None]:
        """Receives the rest of a streamed put into its temp file; its ref and the sidecar to commit."""
        hasher = hashlib.sha256()
        size = head.size_bytes
        batch = head.chunks
        batch_bytes = size
        async for chunk in rest:
            size += len(chunk)
            _check_size(key, size, max_size_bytes)
            batch.append(chunk)
            batch_bytes += len(chunk)
            if batch_bytes >= WRITE_BATCH_BYTES:
                await asyncio.to_thread(write_chunks, file, hasher, batch)
                batch, batch_bytes = [], 0
        return await asyncio.to_thread(self._write_last_chunks, file, hasher, batch, key, size, content_type)

    # -- get / stat -------------------------------------------------------------------------

    async def get(self, key: str, *, offset_bytes: int = 0, length_bytes: int = 0) -> tuple[ObjectRef, ChunkStream]:
        self._check_key(key)
        validate_range(offset_bytes, length_bytes)
        file, ref = await self._open(key)
        if offset_bytes > ref.size_bytes:
            await asyncio.to_thread(file.close)
            raise RangeNotSatisfiable(f"offset {offset_bytes} is past the end of {key!r} ({ref.size_bytes} bytes)")
        end = ref.size_bytes if not length_bytes else min(ref.size_bytes, offset_bytes + length_bytes)
        await asyncio.to_thread(file.seek, offset_bytes)
        return ref, FileChunks(file, end - offset_bytes)

    async def stat(self, key: str) -> ObjectRef | None:
        self._check_key(key)
        try:
            file, ref = await self._open(key)
        except ObjectNotFound:
            return None
        await asyncio.to_thread(file.close)
        return ref

    async def exists(self, key: str) -> bool:
        return await self.stat(key) is not None

    async def _open(self, key: str) -> tuple[IO[bytes], ObjectRef]:
        """The open bytes file and a sidecar that describes that very file."""
        opened = await asyncio.to_thread(self._open_object, key)
        if opened is not None and opened[1] is not None:
            return opened[0], opened[1]
        if opened is not None:
            await asyncio.to_thread(opened[0].close)
        async with self._locks.hold(key):  # no commit of this key runs while we hold it
            opened = await run_whole(self._open_object, key)
            if opened is None:
                raise ObjectNotFound(f"no object {key!r}")
            file, ref = opened
            if ref is None:
                ref = await run_whole(self._rebuild_meta, key, file)
            return file, ref

    # -- delete -----------------------------------------------------------------------------

    async def delete(self, keys: Iterable[str] = (), *, prefix: str = "") -> int:
        targets = set(keys)
        for key in targets:
            self._check_key(key)
        if prefix:
            self._check_prefix(prefix)
            targets.update(await asyncio.to_thread(self._keys_under_else_prune, prefix))
        if not targets:  # e.g. the inputs of a workflow that had none: one thread hop in all
            return 0
        deleted = 0
        for key in sorted(targets):
            async with self._locks.hold(key):
                deleted += await run_whole(self._unlink, key)
        await asyncio.to_thread(self._prune, targets, prefix)
        return deleted

    # -- key rules and paths ----------------------------------------------------------------

    def _check_key(self, key: str, *, what: str = "key") -> None:
        validate_key(key, what=what)
        for segment in key.split("/"):
            if segment.endswith(META_SUFFIX):
                raise InvalidKey(f"{what} {key!r}: segments ending in {META_SUFFIX!r} are reserved")
            if len(segment.encode("utf-8")) > MAX_SEGMENT_BYTES:
                raise InvalidKey(f"{what} {key[:80]!r} has a segment over {MAX_SEGMENT_BYTES} bytes")

    def _check_prefix(self, prefix: str) -> None:
        validate_prefix(prefix)
        self._check_key(prefix[:-1], what="prefix")

    def _path(self, key: str) -> Path:
        return self._data.joinpath(*key.split("/"))

    # -- blocking file work (always in a worker thread) -------------------------------------

    def _prepare(self) -> None:
        self._data.mkdir(parents=True, exist_ok=True)
        self._tmp.mkdir(parents=True, exist_ok=True)
        if self._data.stat().st_dev != self._tmp.stat().st_dev:
            raise SettingsError(f"{self._data} and {self._tmp} must be on one filesystem for atomic renames")
        leftovers = [entry for entry in self._tmp.iterdir() if entry.name.endswith(".tmp")]
        for entry in leftovers:
            entry.unlink(missing_ok=True)
        if leftovers:
            log.warning("removed %d unfinished writes from %s", len(leftovers), self._tmp)
        if self._detect_xattrs:
            self._xattrs = xattrs_supported(self._tmp)
        if self._xattrs:
            log.info("object metadata is kept in the %s extended attribute of each file", META_XATTR)
        else:
            log.info("object metadata is kept in %s sidecar files (no user extended attributes)", META_SUFFIX)

    def _conflict(self, key: str) -> str | None:
        """Why `key` cannot be stored (an object is its prefix, or it is a prefix), if it cannot."""
        path = self._path(key)
        for parent in reversed(path.relative_to(self._data).parents):
            if parent.parts and (self._data / parent).is_file():
                return f"cannot store {key!r}: {parent.as_posix()!r} is an object"
        if path.is_dir():
            return f"cannot store {key!r}: it is a prefix of other objects"
        return None

    def _open_temp(self, key: str, spill: Spill) -> tuple[IO[bytes], Path]:
        """A temp file for a streamed put, once the key is known to be placeable (before the upload)."""
        if conflict := self._conflict(key):
            raise KeyConflict(conflict)
        return spill.open(self._tmp, "put-")

    def _store_whole(self, key: str, data: bytes, content_type: str) -> ObjectRef:
        """Stores an object received whole: temp file, fsync and commit in one worker call."""
        ref = ObjectRef(key, len(data), hashlib.sha256(data).hexdigest(), content_type)
        file, temp = create_temp(self._tmp, "put-")
        try:
            with file:
                file.write(data)
                sidecar = seal(file, ref, self._xattrs)
            self._commit(key, temp, sidecar)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        return ref

    def _write_last_chunks(
        self, file: IO[bytes], hasher: hashlib._Hash, chunks: list[bytes], key: str, size: int, content_type: str
    ) -> tuple[ObjectRef, bytes | None]:
        """Writes a streamed put's last batch, then seals and closes its temp file."""
        with file:
            write_chunks(file, hasher, chunks)
            ref = ObjectRef(key, size, hasher.hexdigest(), content_type)
            return ref, seal(file, ref, self._xattrs)

    def _commit(self, key: str, temp: Path, sidecar: bytes | None) -> None:
        """Moves a sealed temp file into place, with its sidecar if it has one, durably."""
        path = self._path(key)
        if sidecar is None:
            self._place(key, temp, path)
            with contextlib.suppress(FileNotFoundError):
                meta_path(path).unlink()  # left by an older object at this key, stored with a sidecar
        else:
            meta_temp = write_temp(self._tmp, "meta-", sidecar)
            try:
                self._place(key, temp, path)
                os.replace(meta_temp, meta_path(path))
            except BaseException:
                meta_temp.unlink(missing_ok=True)
                raise
        fsync_dir(path.parent)
        self._dirs.sync(path.parent)  # the directories made for it are named durably too

    def _place(self, key: str, temp: Path, path: Path) -> None:
        """Moves the bytes into place; retries when a concurrent delete prunes the directory."""
        for _ in range(10):
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                os.replace(temp, path)
                return
            except (FileExistsError, NotADirectoryError, IsADirectoryError):
                conflict = self._conflict(key) or f"cannot store {key!r}: a prefix of it is an object"
                raise KeyConflict(conflict) from None
            except FileNotFoundError:
                if not temp.exists():
                    raise
        raise OSError(errno.EAGAIN, f"directory of {key!r} kept disappearing")

    def _open_object(self, key: str) -> tuple[IO[bytes], ObjectRef | None] | None:
        path = self._path(key)
        try:
            file = open(path, "rb")  # handed to the caller, who closes it
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        try:
            info = os.fstat(file.fileno())
            if not stat.S_ISREG(info.st_mode):
                file.close()
                return None
            return file, described(key, path, file.fileno(), info, self._xattrs)
        except BaseException:
            file.close()
            raise

    def _rebuild_meta(self, key: str, file: IO[bytes]) -> ObjectRef:
        """Rewrites metadata that does not match its bytes (torn by a crash or changed behind our
        back), keeping the content type it recorded."""
        hasher = hashlib.sha256()
        size = 0
        file.seek(0)
        while chunk := file.read(READ_CHUNK_BYTES):
            hasher.update(chunk)
            size += len(chunk)
        path, fd = self._path(key), file.fileno()
        content_type = recorded_content_type(path, fd, self._xattrs) or DEFAULT_CONTENT_TYPE
        ref = ObjectRef(key, size, hasher.hexdigest(), content_type)
        rewrite(path, fd, ref, self._xattrs, self._tmp)
        log.warning("rebuilt the metadata of %r from its bytes", key)
        return ref

    def _keys_under(self, prefix: str) -> set[str]:
        base = self._path(prefix[:-1])
        keys: set[str] = set()
        for directory, _dirs, files in os.walk(base):
            for name in files:
                relative = (Path(directory) / name.removesuffix(META_SUFFIX)).relative_to(self._data)
                keys.add(relative.as_posix())
        return keys

    def _keys_under_else_prune(self, prefix: str) -> set[str]:
        """The keys under `prefix`; when there are none, prunes what is left of it right away."""
        keys = self._keys_under(prefix)
        if not keys:
            self._prune((), prefix)
        return keys

    def _unlink(self, key: str) -> bool:
        path = self._path(key)
        try:
            path.unlink()
            existed = True
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            existed = False
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            meta_path(path).unlink()
        return existed

    def _prune(self, keys: Iterable[str], prefix: str) -> None:
        """Removes directories the delete left empty, up to (not including) data/."""
        starts = {self._path(key).parent for key in keys}
        if prefix:
            base = self._path(prefix[:-1])
            for walked, _dirs, _files in os.walk(base, topdown=False):
                with contextlib.suppress(OSError):
                    self._dirs.rmdir(Path(walked))
            starts.add(base.parent)
        for start in starts:
            directory = start
            while directory != self._data and self._data in directory.parents:
                try:
                    self._dirs.rmdir(directory)
                except OSError:
                    break
                directory = directory.parent
