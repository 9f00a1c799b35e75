"""A SQLite file's connections: write transactions on the event loop, reads and checkpoints on
threads of their own.

In WAL mode with synchronous=NORMAL a commit appends to the WAL without an fsync (~40 us of
wall time), so a write transaction costs less on the event loop than a hop to a thread and
back: the hop's wake-up, and under load a GIL handoff at every statement (sqlite3 releases
the GIL around each step, and taking it back waits on the busy loop thread). So `write` runs
on the calling thread, on one connection kept open.

What does fsync is the checkpoint (copying the WAL into the database file): the write
connection never checkpoints (`wal_autocheckpoint=0`); every CHECKPOINT_EVERY write
transactions a PASSIVE checkpoint runs on the checkpoint thread's connection, beside the
writer. Such a checkpoint copies the frames that were in the WAL when it began, and SQLite
starts the WAL over only at a write that finds every frame copied, so under writes that never
pause the WAL keeps growing (each checkpoint copies all it saw, but frames written meanwhile
keep the next writer from starting over). When a checkpoint found more than WAL_FRAMES_MAX
frames, `transaction` holds the next write until a checkpoint run while nothing is written has
copied them all (as SQLite's own autocheckpoint holds the writer), awaiting it: the loop goes
on meanwhile, and the writes that queue up share the next group commit.

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
# The WAL size (in 4 KiB frames, ~16 MiB) past which writes wait for a checkpoint to copy it all.
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
        self._checkpoint: asyncio.Future[tuple[int, int]] | None = None
        # Metrics and tests: the WAL's size in frames when the last checkpoint ran (0 after one
        # run while nothing was written copied all of it: the next write starts it over),
        # checkpoints run, and the times a write waited for one.
        self.wal_frames = 0
        self.checkpoints = 0
        self.checkpoint_waits = 0

    async def transaction(self, work: Callable[[Connection], T]) -> T:
        """`write(work)`, after a checkpoint of the whole WAL when the last one found it past
        WAL_FRAMES_MAX."""
        if self.wal_frames > WAL_FRAMES_MAX:
            await self._checkpoint_quietly()
        return self.write(work)

    async def _checkpoint_quietly(self) -> None:
        """A checkpoint while nothing is written (callers hold Database.write_lock): it copies
        the whole WAL (unless a reader still needs part of it), so the next write starts the
        WAL over. One that was already running began before the pause: it is waited for, then
        another one runs. A write waits one round only: a long read that keeps the checkpoint
        from copying everything slows writes down, it does not stop them."""
        self.checkpoint_waits += 1
        if self._checkpoint is not None and not self._checkpoint.done():
            await asyncio.wait({self._checkpoint})
        checkpoint = self._start_checkpoint()
        await asyncio.wait({checkpoint})
        if not checkpoint.cancelled() and checkpoint.exception() is None:
            frames, copied = checkpoint.result()
            if frames >= 0 and copied == frames:
                self.wal_frames = 0  # (what the next write finds when it starts the WAL over)

    def write(self, work: Callable[[Connection], T]) -> T:
        """`work(connection)` in one transaction on the calling thread: committed when it
        returns, rolled back when it raises. Callers hold Database.write_lock."""
        conn = self._write_connection()
        try:
            with conn.begin():
                return work(conn)
        finally:
            self._writes_since_checkpoint += 1
            if self._writes_since_checkpoint >= CHECKPOINT_EVERY:
                self._start_checkpoint()

    def read_here(self, work: Callable[[Connection], T]) -> T:
        """`work(connection)`, which only reads, on the calling thread: on the write connection
        between its transactions (a write transaction never spans an await), in a transaction
        of its own that is rolled back. For reads that take a few index seeks: a hop to the
        reader thread costs more than they do."""
        conn = self._write_connection()
        transaction = conn.begin()
        try:
            return work(conn)
        finally:
            transaction.rollback()

    def _write_connection(self) -> Connection:
        conn = self._writer
        if conn is None or conn.closed or conn.invalidated:
            conn = self._writer = self.engine.connect()
            conn.exec_driver_sql("PRAGMA wal_autocheckpoint=0").close()  # the checkpointer's job
            conn.commit()
        return conn

    async def read(self, work: Callable[[Connection], T]) -> T:
        """`work(connection)` on the reader thread, whose connection is query-only (a write
        there fails loudly); it sees every transaction committed before it starts."""
        if self._reader is None:
            self._reader = _Worker(self.engine, "sqlite-read", "PRAGMA query_only=ON")
        return await self._reader.run(functools.partial(_in_transaction, work))

    def _start_checkpoint(self) -> asyncio.Future[tuple[int, int]]:
        """The running checkpoint, else a new one."""
        if self._checkpoint is not None and not self._checkpoint.done():
            return self._checkpoint
        self._writes_since_checkpoint = 0
        if self._checkpointer is None:
            self._checkpointer = _Worker(self.engine, "sqlite-checkpoint")
        self._checkpoint = asyncio.ensure_future(self._checkpointer.run(_checkpoint))
        self._checkpoint.add_done_callback(self._checkpoint_done)
        return self._checkpoint

    def _checkpoint_done(self, done: asyncio.Future[tuple[int, int]]) -> None:
        if done.cancelled():
            return
        if (err := done.exception()) is not None:
            log.warning("WAL checkpoint failed (the next one retries): %s", err)
            self.wal_frames = 0  # so that writes do not wait on a checkpoint that keeps failing
            return
        self.checkpoints += 1
        frames, _copied = done.result()
        if frames >= 0:  # (-1: another connection was checkpointing)
            self.wal_frames = frames

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


def _checkpoint(conn: Connection) -> tuple[int, int]:
    """A PASSIVE checkpoint (it copies what no reader still needs, without waiting for readers
    or the writer): the WAL's size in frames and the frames copied so far (-1, -1 when another
    connection was checkpointing)."""
    _busy, frames, copied = conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)").one()
    conn.commit()
    return int(frames), int(copied)


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
