"""A SQLite file's connections: write transactions on the event loop, reads and checkpoints on
threads of their own.

In WAL mode with synchronous=NORMAL a commit appends to the WAL without an fsync (~40 us of
wall time), so a write transaction costs less on the event loop than a hop to a thread and
back: the hop's wake-up, and under load a GIL handoff at every statement (sqlite3 releases
the GIL around each step, and taking it back waits on the busy loop thread). So `write` runs
on the calling thread, on one connection kept open. What does fsync is the checkpoint
(copying the WAL into the database file): the write connection never checkpoints by itself
(`wal_autocheckpoint=0`); every CHECKPOINT_EVERY write transactions a PASSIVE checkpoint runs
on the checkpoint thread's connection, which neither blocks nor waits for the writer. Such a
checkpoint copies the frames that were in the WAL when it began; SQLite starts the WAL over
only once every frame is copied, so while writes keep coming faster than the thread catches
up, the WAL grows. When the last checkpoint found more than WAL_FRAMES_MAX frames, the writer
runs the next one itself between two transactions (as SQLite's autocheckpoint would): nothing
is written meanwhile, so it copies everything and the WAL starts over.

Reads (`read`) run on a thread and a connection of their own: in WAL mode they do not wait for
the writer, and a long one (a list, a page far back) does not hold up the loop.

What the loop may still wait for: a write transaction of another connection to this file (the
async engine's, or another process's) holds SQLite's write lock, and `write` waits for it
(busy_timeout). In this process every writer holds Database.write_lock, so that wait is for
another process only (e.g. the admin command), and their transactions are short.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine, make_url

log = logging.getLogger(__name__)

T = TypeVar("T")

# A PASSIVE checkpoint is started after this many write transactions (when none is running).
# A group commit writes a few to a few dozen pages, so the WAL stays around SQLite's own
# autocheckpoint size (1,000 pages).
CHECKPOINT_EVERY = 64
# The WAL size (in 4 KiB frames) past which the writer checkpoints by itself (~16 MiB).
WAL_FRAMES_MAX = 4000
CLOSE_WAIT_S = 30  # what closing waits for a checkpoint that is running


def sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    """Run on every new connection to the file (this module's and the async engine's)."""
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA busy_timeout=5000")  # first: switching to WAL waits for another process's lock too
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes in WAL mode
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


class SqliteFile:
    """The write connection (used on the loop), the reader and the checkpointer of one file."""

    def __init__(self, url: str) -> None:
        self.engine: Engine = create_engine(make_url(url).set(drivername="sqlite"))
        event.listen(self.engine, "connect", sqlite_pragmas)
        self._writer: Connection | None = None
        self._reader: _Worker | None = None
        self._checkpointer: _Worker | None = None
        self._writes_since_checkpoint = 0
        self._checkpoint: asyncio.Future[int] | None = None
        self.wal_frames = 0  # the WAL's size when the last checkpoint ran (metrics)
        self.checkpoints = 0  # checkpoints run on the thread, and by the writer (tests, bench)
        self.writer_checkpoints = 0

    def write(self, work: Callable[[Connection], T]) -> T:
        """`work(connection)` in one transaction on the calling thread: committed when it
        returns, rolled back when it raises. Callers hold Database.write_lock."""
        conn = self._writer
        if conn is None or conn.closed or conn.invalidated:
            conn = self._writer = self.engine.connect()
            conn.exec_driver_sql("PRAGMA wal_autocheckpoint=0")  # the checkpointer's job
            conn.commit()
        try:
            with conn.begin():
                return work(conn)
        finally:
            self._writes_since_checkpoint += 1
            if self._writes_since_checkpoint >= CHECKPOINT_EVERY:
                if self.wal_frames > WAL_FRAMES_MAX:
                    self._writer_checkpoint(conn)
                else:
                    self._start_checkpoint()

    def _writer_checkpoint(self, conn: Connection) -> None:
        try:
            frames = _checkpoint(conn)
        except Exception as err:  # the transaction before it has committed; its caller must not fail
            log.warning("WAL checkpoint failed (the next one retries): %s", err)
            conn.rollback()
            return
        if frames >= 0:  # -1: the checkpoint thread is running one; this one waits for the next turn
            self._writes_since_checkpoint = 0
            self.wal_frames = frames
            self.writer_checkpoints += 1

    async def read(self, work: Callable[[Connection], T]) -> T:
        """`work(connection)` on the reader thread, whose connection is query-only (a write
        there fails loudly); it sees every transaction committed before it starts."""
        if self._reader is None:
            self._reader = _Worker(self.engine, "sqlite-read", "PRAGMA query_only=ON")
        return await self._reader.run(functools.partial(_in_transaction, work))

    def _start_checkpoint(self) -> None:
        if self._checkpoint is not None and not self._checkpoint.done():
            return  # the next write after it ends starts another
        self._writes_since_checkpoint = 0
        if self._checkpointer is None:
            self._checkpointer = _Worker(self.engine, "sqlite-checkpoint")
        self._checkpoint = asyncio.ensure_future(self._checkpointer.run(_checkpoint))
        self._checkpoint.add_done_callback(self._checkpoint_done)

    def _checkpoint_done(self, done: asyncio.Future[int]) -> None:
        if done.cancelled():
            return
        if (err := done.exception()) is not None:
            log.warning("WAL checkpoint failed (the next one retries): %s", err)
        else:
            if (frames := done.result()) >= 0:
                self.wal_frames = frames
            self.checkpoints += 1

    async def checkpoint_done(self) -> None:
        """Waits (at most CLOSE_WAIT_S) for the running checkpoint, if one is."""
        if self._checkpoint is not None:
            await asyncio.wait({self._checkpoint}, timeout=CLOSE_WAIT_S)

    async def close(self) -> None:
        await self.checkpoint_done()
        for worker in (self._reader, self._checkpointer):
            if worker is not None:
                await worker.close()
        self._reader = self._checkpointer = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self.engine.dispose()


def _in_transaction(work: Callable[[Connection], T], conn: Connection) -> T:
    with conn.begin():
        return work(conn)


def _checkpoint(conn: Connection) -> int:
    """A PASSIVE checkpoint (it copies what no reader still needs, without waiting for readers
    or the writer); returns the WAL's size in frames, -1 when another checkpoint was running."""
    _busy, frames, _copied = conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)").one()
    conn.commit()
    return int(frames)


class _Worker:
    """One thread with one connection of its own, opened on first use and kept."""

    def __init__(self, engine: Engine, name: str, *setup: str) -> None:
        self._engine = engine
        self._setup = setup
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=name)
        self._conn: Connection | None = None

    async def run(self, work: Callable[[Connection], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, self._call, work)

    def _call(self, work: Callable[[Connection], T]) -> T:
        conn = self._conn
        if conn is None or conn.closed or conn.invalidated:
            conn = self._conn = self._engine.connect()
            for statement in self._setup:
                conn.exec_driver_sql(statement)
            conn.commit()
        return work(conn)

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._thread, self._close)
        self._thread.shutdown()
