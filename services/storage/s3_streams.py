"""Bridges between the event loop and the minio SDK's blocking streams.

    UploadPipe    async producer -> a file-like `read()` that minio's `put_object` calls in a
                  worker thread; at most `depth` chunks wait in between (back-pressure reaches
                  the gRPC client through flow control), and the bytes are hashed in the thread.
    ResponseChunks  a minio GET response (urllib3) as a ChunkStream; each read in a thread.

Nothing here holds a whole object: the pipe holds `depth` chunks, minio one part.
"""

from __future__ import annotations

import asyncio
import hashlib
import queue
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, Protocol

from services.storage.backend import READ_CHUNK_BYTES

PIPE_DEPTH_CHUNKS = 4
_EOF = object()
_ABORT = object()


class UploadAborted(Exception):
    """Raised inside minio's read: the producer failed, so the upload must not complete."""


class UploadPipe:
    """A bounded one-way pipe of byte chunks from the loop to one reading thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop, depth: int = PIPE_DEPTH_CHUNKS) -> None:
        self._loop = loop
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._credits = asyncio.Semaphore(depth)
        self._reader_gone = False
        self._item = b""
        self._pending = memoryview(b"")
        self._ended = False
        self.hasher = hashlib.sha256()  # of every byte read so far (only the reader thread updates it)
        self.size_bytes = 0

    # -- the loop's side --------------------------------------------------------------------

    async def send(self, chunk: bytes) -> bool:
        """Queues `chunk` once there is room; False when the reader stopped reading (it failed)."""
        await self._credits.acquire()
        if self._reader_gone:
            return False
        self._queue.put(chunk)
        return True

    def end(self) -> None:
        """No more chunks: the reader sees end-of-file after the queued ones."""
        self._queue.put(_EOF)

    def abort(self) -> None:
        """The reader's next read raises UploadAborted (minio then aborts the multipart upload)."""
        self._queue.put(_ABORT)

    def reader_gone(self) -> None:
        """Called when the reading thread finished: wakes a blocked `send`."""
        self._reader_gone = True
        for _ in range(PIPE_DEPTH_CHUNKS + 1):
            self._credits.release()

    # -- the thread's side ------------------------------------------------------------------

    def read(self, size: int = -1) -> bytes:
        """Up to `size` bytes (all of a part at once, so minio does not concatenate), b"" at the end."""
        parts: list[bytes] = []
        wanted = size if size >= 0 else 1 << 62
        got = 0
        while got < wanted and not self._ended:
            if not self._pending:
                item = self._queue.get()
                if item is _ABORT:
                    raise UploadAborted("the upload stream failed; the object is not stored")
                if item is _EOF:
                    self._ended = True
                    break
                self._loop.call_soon_threadsafe(self._credits.release)
                self._item = item
                self._pending = memoryview(item)
            if len(self._pending) <= wanted - got and len(self._pending) == len(self._item):
                parts.append(self._item)  # the whole chunk: no copy
                got += len(self._item)
                self._pending = memoryview(b"")
                continue
            piece = self._pending[: wanted - got]
            self._pending = self._pending[len(piece) :]
            parts.append(bytes(piece))
            got += len(piece)
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        self.hasher.update(data)
        self.size_bytes += len(data)
        return data


class _Response(Protocol):
    def read(self, amt: int | None = None) -> bytes: ...
    def close(self) -> None: ...
    def release_conn(self) -> None: ...


class ResponseChunks:
    """A ChunkStream over a minio GET response; closes (and frees the connection) at the end."""

    def __init__(
        self,
        response: _Response | None,
        remaining: int,
        executor: Executor,
        translate: Callable[[Exception], Exception] = lambda err: err,
    ) -> None:
        self._response: _Response | None = response
        self._remaining = remaining
        self._executor = executor
        self._translate = translate  # a failed read (connection lost) -> the service's error

    def __aiter__(self) -> ResponseChunks:
        return self

    async def __anext__(self) -> bytes:
        chunk = b""
        if self._response is not None and self._remaining > 0:
            try:
                chunk = await self._run(self._response.read, min(READ_CHUNK_BYTES, self._remaining))
            except Exception as err:
                await self.aclose()
                raise self._translate(err) from err
            except BaseException:
                await self.aclose()
                raise
        if not chunk:
            await self.aclose()
            raise StopAsyncIteration
        self._remaining -= len(chunk)
        return chunk

    async def aclose(self) -> None:
        response, self._response = self._response, None
        if response is not None:
            await self._run(_close, response)

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)


def _close(response: _Response) -> None:
    response.close()
    response.release_conn()
