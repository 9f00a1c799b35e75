"""Primitives the local backend is built from: blocking file steps and two small async pieces
(an object's metadata: local_meta.py).

Every function here that touches the disk blocks; the backend calls them through
asyncio.to_thread (or `run_whole` while it holds a key's lock), never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import IO, Any, TypeVar

from services.storage.backend import READ_CHUNK_BYTES

_T = TypeVar("_T")


# -- temp files and durability ----------------------------------------------------------------


def create_temp(directory: Path, prefix: str) -> tuple[IO[bytes], Path]:
    """A new empty temp file (mode 0600) in `directory`, open for writing."""
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=directory)
    return os.fdopen(fd, "wb"), Path(name)


def durable(file: IO[bytes]) -> int:
    """Makes what was written to `file` durable; returns its inode."""
    file.flush()
    os.fsync(file.fileno())
    return os.fstat(file.fileno()).st_ino


def write_temp(directory: Path, prefix: str, content: bytes) -> Path:
    """A durable temp file holding `content`, ready to be moved into place with os.replace."""
    file, temp = create_temp(directory, prefix)
    try:
        with file:
            file.write(content)
            durable(file)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return temp


def write_chunks(file: IO[bytes], hasher: Any, chunks: list[bytes]) -> None:
    """Hashes and writes a batch of chunks (hashlib releases the GIL on large buffers)."""
    for chunk in chunks:
        hasher.update(chunk)
        file.write(chunk)


class Spill:
    """The temp file a streamed put writes to, remembered by the put that asked for it.

    `open` runs in a worker thread; if the put is cancelled while it runs, the put never sees
    the returned file, but this record of it lets `discard` still close and remove it.
    """

    def __init__(self) -> None:
        self._opened: tuple[IO[bytes], Path] | None = None

    def open(self, directory: Path, prefix: str) -> tuple[IO[bytes], Path]:
        self._opened = create_temp(directory, prefix)
        return self._opened

    @property
    def opened(self) -> bool:
        return self._opened is not None

    def discard(self) -> None:
        """Closes and removes the temp file (a no-op once it was committed)."""
        if self._opened is None:
            return
        file, temp = self._opened
        with contextlib.suppress(OSError):  # closing flushes, which fails again on a full disk
            file.close()
        temp.unlink(missing_ok=True)


def fsync_dir(directory: Path) -> None:
    """Makes renames inside `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DurableDirs:
    """The directories under `root` known to be durably named in their parents.

    A put's file is durable once its directory is fsynced (after the rename) and every directory
    between it and `root` is durably named in its parent. `sync(directory)` fsyncs the parent
    of each directory on that chain that is not known to be (one made since, or not yet seen by
    this process), nearest first, and remembers it: the first put into a new directory pays
    for the directories it made, the next ones for nothing. On ext4 these fsyncs mostly find
    their change already committed by the put's own directory fsync.
    `rmdir` removes a directory and forgets it, under the same lock as `sync`'s fsync, so a
    directory removed and made again is synced again. A caller's own object sits in the chain it
    syncs, so no directory of that chain can be removed meanwhile (only empty ones are).
    """

    MAX_KNOWN = 100_000  # past this many, forgotten all at once (they are synced again when used)

    def __init__(self, root: Path) -> None:
        self._root = root
        self._known: set[Path] = set()
        self._lock = threading.Lock()

    def sync(self, directory: Path) -> None:
        while directory != self._root and self._root in directory.parents and directory not in self._known:
            with self._lock:
                if directory not in self._known:
                    fsync_dir(directory.parent)
                    if len(self._known) >= self.MAX_KNOWN:
                        self._known.clear()
                    self._known.add(directory)
            directory = directory.parent

    def rmdir(self, directory: Path) -> None:
        """os.rmdir (raising what it raises), then forgets `directory`."""
        with self._lock:
            os.rmdir(directory)
            self._known.discard(directory)


# -- async pieces -----------------------------------------------------------------------------


class FileChunks:
    """A ChunkStream over an open file: at most `remaining` bytes, READ_CHUNK_BYTES at a time.

    Owns the file: closes it at the end, on aclose(), or when a read fails.
    """

    def __init__(self, file: IO[bytes], remaining: int) -> None:
        self._file = file
        self._remaining = remaining

    def __aiter__(self) -> FileChunks:
        return self

    async def __anext__(self) -> bytes:
        chunk = b""
        if self._remaining > 0 and not self._file.closed:
            try:
                chunk = await asyncio.to_thread(self._file.read, min(READ_CHUNK_BYTES, self._remaining))
            except BaseException:
                await self.aclose()
                raise
        if not chunk:
            await self.aclose()
            raise StopAsyncIteration
        self._remaining -= len(chunk)
        return chunk

    async def aclose(self) -> None:
        if not self._file.closed:
            await asyncio.to_thread(self._file.close)


class KeyLocks:
    """One asyncio.Lock per key, kept only while someone holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}
        self._users: dict[str, int] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock = self._locks.setdefault(key, asyncio.Lock())
        self._users[key] = self._users.get(key, 0) + 1
        try:
            async with lock:
                yield
        finally:
            self._users[key] -= 1
            if not self._users[key]:
                del self._users[key], self._locks[key]

    def __len__(self) -> int:
        return len(self._locks)


async def run_whole(fn: Callable[..., _T], *args: Any) -> _T:
    """Runs `fn` in a thread and, if cancelled meanwhile, waits for it before re-raising.

    Used under a key's lock, so the lock is never released while the thread still works.
    """
    return await _through_cancel(asyncio.ensure_future(asyncio.to_thread(fn, *args)))


async def _through_cancel(work: asyncio.Future[_T]) -> _T:
    """`await work`; if the caller is cancelled meanwhile, waits for `work` before re-raising."""
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        await asyncio.wait([work])
        if not work.cancelled():
            work.exception()  # retrieved on purpose: the caller is gone, its cancellation wins
        raise


class Writers:
    """Small puts' file work (temp file, fsync, rename, directory fsyncs) on `threads` threads
    of their own, taken in batches.

    With asyncio.to_thread each put was one hand-off to the default pool and one back to the
    loop, and under load up to six pool threads and the loop contended for the GIL at every
    system call (each put makes about twenty). Here a job is queued under a lock; a writer takes
    every job queued, runs them one after the other, and hands their results back to the loop in
    one call. With 20 puts of small new objects at a time (`python -m bench.storage_puts`),
    storage's CPU per put went from 1.6-1.7 ms to 1.1-1.3 ms and its rate from ~670 to ~900
    puts/s. One thread cut the CPU further (0.9 ms) but put every fsync in one line, and the
    puts' latency rose (the fleet in bench.throughput finished fewer workflows a second).

    `run` is `run_whole`'s contract: if the caller is cancelled, it still waits for its job
    before re-raising (a key's lock is never released while its job runs).
    """

    def __init__(self, threads: int = 3) -> None:
        self._threads_wanted = threads
        self._threads: list[threading.Thread] = []
        self._jobs: list[tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any]]] = []
        self._ready = threading.Condition()
        self._closed = False

    async def run(self, fn: Callable[..., _T], *args: Any) -> _T:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[_T] = loop.create_future()
        with self._ready:
            if self._closed:
                raise RuntimeError("the writers are closed")
            if not self._threads:
                self._start()
            self._jobs.append((fn, args, done))
            self._ready.notify()
        return await _through_cancel(done)

    def close(self) -> None:
        """Stops the threads once the jobs queued have run (waits for them)."""
        with self._ready:
            self._closed = True
            self._ready.notify_all()
        for thread in self._threads:
            thread.join()

    def _start(self) -> None:
        for i in range(self._threads_wanted):
            thread = threading.Thread(target=self._work, name=f"storage-writer-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _work(self) -> None:
        while True:
            with self._ready:
                while not self._jobs and not self._closed:
                    self._ready.wait()
                if not self._jobs:
                    return
                batch, self._jobs = self._jobs, []
            results: list[tuple[asyncio.Future[Any], BaseException | None, Any]] = []
            for fn, args, done in batch:
                try:
                    results.append((done, None, fn(*args)))
                except BaseException as err:  # handed to the caller, as to_thread would
                    results.append((done, err, None))
            loop = batch[0][2].get_loop()
            try:
                loop.call_soon_threadsafe(_settle, results)
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass


def _settle(results: list[tuple[asyncio.Future[Any], BaseException | None, Any]]) -> None:
    for done, error, value in results:
        if done.done():
            continue
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(value)
