"""The async engine, SQLite tuning, group commit; the schema migrations are db/migrations.py.

SQLite runs in WAL mode with one writer at a time (`write_lock`), which is what SQLite
supports anyway; a file's write transactions run on the event loop's thread, its reads and
checkpoints on threads of their own (db/sqlite_file.py). On Postgres `write_lock` is a no-op:
transactions and row locks (`with_for_update` where a row is read, changed and written back)
do that job.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlmodel.ext.asyncio.session import AsyncSession

from services.common.errors import ComfyfleetError
from services.scheduler.db.migrations import migrate_schema
from services.scheduler.db.sqlite_file import SqliteFile, sqlite_pragmas

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")


class Database:
    """Owns the engine and the session factory."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            path = url.split(":///", 1)[-1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.engine: AsyncEngine = create_async_engine(url, pool_pre_ping=not self.is_sqlite)
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", sqlite_pragmas)
        self.sessions = async_sessionmaker(self.engine, class_=AsyncSession, expire_on_commit=False)
        # A SQLite file: write transactions on the loop, reads and checkpoints on threads
        # (db/sqlite_file.py); Postgres and SQLite in memory go through the async engine.
        self.sqlite_file: SqliteFile | None = None
        if self.is_sqlite and path and path != ":memory:":
            self.sqlite_file = SqliteFile(url)
        # SQLite has one writer; serialising writes here avoids "database is locked".
        # Postgres has row locks and takes concurrent transactions.
        self.write_lock: contextlib.AbstractAsyncContextManager[Any] = (
            asyncio.Lock() if self.is_sqlite else contextlib.nullcontext())
        # Operations whose callers were cancelled, still finishing (see runs_to_completion).
        self._orphans: set[asyncio.Future[Any]] = set()
        # Group commit (`submit`): work waiting for the next shared write transaction.
        self._queued: list[tuple[Callable[[Connection], Any], asyncio.Future[Any]]] = []
        self._committer: asyncio.Task[None] | None = None
        self.batches = 0  # write transactions the committer ran, and the work they held:
        self.batched = 0  # batched / batches is the mean batch size (bench, tests)

    async def migrate(self) -> None:
        for attempt in range(5):
            try:
                async with self.engine.begin() as conn:
                    await conn.run_sync(migrate_schema)
                return
            except OperationalError as err:
                # Two processes opening a new SQLite file at once: one may fail to switch it to
                # WAL (SQLite answers "locked" without waiting); by the next try it is switched.
                if not self.is_sqlite or "database is locked" not in str(err) or attempt == 4:
                    raise
                await asyncio.sleep(0.1 * (attempt + 1))

    async def transaction(self, work: Callable[[Connection], T]) -> T:
        """`work(connection)` in one transaction: committed when it returns, rolled back when it
        raises. On a SQLite file it runs right here, on the loop's thread (a commit there costs
        less than a thread hop: db/sqlite_file.py); elsewhere through the async engine's
        run_sync. Either way it must not touch the event loop. Writers hold `write_lock`
        around it, as around any other write."""
        if self.sqlite_file is not None:
            return await self.sqlite_file.transaction(work)
        async with self.engine.begin() as conn:
            return await conn.run_sync(work)

    async def read(self, work: Callable[[Connection], T]) -> T:
        """`work(connection)`, which only reads: on a SQLite file it runs on the reader thread
        (its connection is query-only, so a write there fails loudly), seeing every transaction
        committed before it starts; elsewhere it runs as `transaction` does."""
        if self.sqlite_file is None:
            return await self.transaction(work)
        return await self.sqlite_file.read(work)

    async def read_short(self, work: Callable[[Connection], T]) -> T:
        """`read`, for a read of a few index seeks: on a SQLite file it runs right here, on the
        loop's thread (SqliteFile.read_here), where the hop to the reader thread and back would
        cost more than the read; elsewhere as `read`."""
        if self.sqlite_file is None:
            return await self.read(work)
        return self.sqlite_file.read_here(work)

    def submit(self, work: Callable[[Connection], T]) -> asyncio.Future[T]:
        """Group commit: queues `work` for the next shared write transaction and returns its
        future, which gets `work`'s result or exception once that transaction has committed
        (or rolled back). Works queued while a transaction runs share the next one; queued in
        order, they run in that order (a caller that needs its writes in sequence, e.g. one
        runner's events, submits them one after the other without waiting).

        The work runs whatever happens to the caller: cancelling the future does not stop it.
        Contract: `work` writes nothing before it raises its own (domain) exception: that
        exception goes to its caller alone and the others commit. A database error rolls the
        whole transaction back, and then every work of it runs again in a transaction of its
        own, so that only the one at fault gets the error."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queued.append((work, future))
        if self._committer is None or self._committer.done():
            self._committer = asyncio.create_task(self._commit_queued(), name="group-commit")
        return future

    async def _commit_queued(self) -> None:
        while self._queued:
            batch, self._queued = self._queued[:GROUP_MAX], self._queued[GROUP_MAX:]
            works = [work for work, _ in batch]
            try:
                async with self.write_lock:
                    outcomes = await self.transaction(functools.partial(_run_all, works))
            except Exception:
                if len(works) == 1:
                    outcomes = [await self._alone(works[0])]
                else:  # a database error: which work caused it is found by running each alone
                    outcomes = [await self._alone(work) for work in works]
            self.batches += 1
            self.batched += len(works)
            for (_, future), (ok, value) in zip(batch, outcomes, strict=True):
                if future.done():  # its caller was cancelled; the work ran anyway
                    continue
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)

    async def _alone(self, work: Callable[[Connection], Any]) -> tuple[bool, Any]:
        try:
            async with self.write_lock:
                return True, await self.transaction(work)
        except Exception as err:
            return False, err

    def adopt(self, operation: asyncio.Future[Any]) -> None:
        """Owns an operation nobody awaits any more, until it ends."""
        self._orphans.add(operation)
        operation.add_done_callback(self._orphan_done)

    def _orphan_done(self, operation: asyncio.Future[Any]) -> None:
        self._orphans.discard(operation)
        if not operation.cancelled() and (err := operation.exception()) is not None:
            if not isinstance(err, ComfyfleetError):
                log.warning("database operation of a cancelled call failed: %s", err)

    async def close(self) -> None:
        if self._committer is not None:
            await asyncio.wait({self._committer}, timeout=5)
        if self._orphans:
            await asyncio.wait(set(self._orphans), timeout=5)
        await self.engine.dispose()
        if self.sqlite_file is not None:
            await self.sqlite_file.close()


# At most this many works share one group-commit transaction (bounds its time on the thread).
GROUP_MAX = 256


def _run_all(works: list[Callable[[Connection], Any]], conn: Connection) -> list[tuple[bool, Any]]:
    """The works of one group-commit transaction, in order. Neighbours with the same
    `run_together(conn, works) -> [(ok, result or exception)]` (e.g. workflow changes,
    db/changes.py) run in one call of it, which may then write them with fewer statements."""
    outcomes: list[tuple[bool, Any]] = []
    i = 0
    while i < len(works):
        together = _together(works[i])
        j = i + 1
        if together is None:
            outcomes.append(_run_one(conn, works[i]))
        else:
            while j < len(works) and _together(works[j]) is together:
                j += 1
            outcomes += together(conn, works[i:j])
        i = j
    return outcomes


def _together(work: Callable[[Connection], Any]) -> Callable[[Connection, list[Any]], list[tuple[bool, Any]]] | None:
    return getattr(work, "run_together", None)


def _run_one(conn: Connection, work: Callable[[Connection], Any]) -> tuple[bool, Any]:
    """One work of a group-commit transaction: (True, result), or (False, its own exception).
    A database error is not its own: it propagates and rolls the whole transaction back."""
    try:
        return True, work(conn)
    except DBAPIError:
        raise
    except Exception as err:
        return False, err


class _Store(Protocol):
    db: Database


S = TypeVar("S", bound=_Store)


def runs_to_completion(
    operation: Callable[Concatenate[S, P], Awaitable[T]],
) -> Callable[Concatenate[S, P], Awaitable[T]]:
    """Decorates a store method: the database work finishes even when its caller is cancelled
    (a client hangs up, a deadline passes, a session ends); the caller still gets the
    CancelledError at once, and `Database.close` waits for the work it left behind.

    Cancelling SQLAlchemy's aiosqlite adapter in the middle of a statement invalidates the
    connection, and with aiosqlite >= 0.22 its shielded graceful close can wait forever: a
    task leaks per cancelled call and the event loop cannot shut down.
    """

    @functools.wraps(operation)
    async def shielded(store: S, /, *args: P.args, **kwargs: P.kwargs) -> T:
        task = asyncio.ensure_future(operation(store, *args, **kwargs))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            store.db.adopt(task)
            raise

    return shielded
