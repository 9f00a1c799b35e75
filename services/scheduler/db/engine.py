"""The async engine, SQLite tuning, and the schema migrations.

Migrations are numbered steps recorded in `schema_version`; a new schema change is a new
step appended to MIGRATIONS, never an edit of an old one. The same steps create and upgrade
SQLite and Postgres: write their DDL in the common subset (`DATETIME` in `_add_columns` is
translated for Postgres); on Postgres the run holds a transaction-level advisory lock, so two
processes starting together migrate one after the other.

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

from sqlalchemy import event, inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlmodel import SQLModel
from sqlmodel.ext.asyncio.session import AsyncSession

from services.common.errors import ComfyfleetError
from services.scheduler.db import models
from services.scheduler.db.sqlite_file import SqliteFile, sqlite_pragmas

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")


def _v1_initial(conn: Connection) -> None:
    SQLModel.metadata.create_all(
        conn,
        tables=[
            t.__table__  # type: ignore[union-attr]
            for t in (models.UserRow, models.TokenRow, models.RunnerRow, models.WorkflowRow,
                      models.EventRow, models.OutputRow)
        ],
    )


def _v2_pending_index(conn: Connection) -> None:
    # Read by services.scheduler.db.pending_queue (one index seek per user with waiting work).
    conn.execute(text("CREATE INDEX IF NOT EXISTS ix_workflows_pending "
                      "ON workflows (status, runner_id, priority, user_id, created_at, id)"))


def _add_columns(conn: Connection, table: str, columns: dict[str, str]) -> None:
    """ALTER TABLE ... ADD COLUMN for each column the table lacks (step 1 creates tables from
    the current models, so on a new database the columns may already be there)."""
    present = {c["name"] for c in inspect(conn).get_columns(table)}
    for name, ddl in columns.items():
        if name not in present:
            if conn.dialect.name == "postgresql":
                ddl = ddl.replace("DATETIME", "TIMESTAMP WITH TIME ZONE")
            conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {name} {ddl}"))


def _create_tables(conn: Connection, *tables: type[SQLModel]) -> None:
    SQLModel.metadata.create_all(conn, tables=[t.__table__ for t in tables])  # type: ignore[attr-defined]


def _v3_runner_endpoints(conn: Connection) -> None:
    _add_columns(conn, "runners", {"endpoint": "VARCHAR NOT NULL DEFAULT ''",
                                   "headers_json": "VARCHAR NOT NULL DEFAULT '{}'"})


def _v7_workflow_counts(conn: Connection) -> None:
    """Read by WorkflowStore: count_open seeks (user_id, status) for the open statuses only; a
    list orders by (user_id, created_at, id) from the index alone; a list's total without
    filters is the user's row of `workflow_counts`, which triggers keep on every insert and
    delete of a workflow, whoever writes it (so it cannot drift from the table)."""
    conn.execute(text("CREATE INDEX IF NOT EXISTS ix_workflows_user_status ON workflows (user_id, status)"))
    conn.execute(text("CREATE INDEX IF NOT EXISTS ix_workflows_user_created_id "
                      "ON workflows (user_id, created_at, id)"))
    conn.execute(text("CREATE TABLE IF NOT EXISTS workflow_counts "
                      "(user_id VARCHAR PRIMARY KEY, total BIGINT NOT NULL)"))
    conn.execute(text("DELETE FROM workflow_counts"))
    conn.execute(text("INSERT INTO workflow_counts (user_id, total) "
                      "SELECT user_id, count(*) FROM workflows GROUP BY user_id"))
    bump = ("INSERT INTO workflow_counts (user_id, total) VALUES (NEW.user_id, 1) "
            "ON CONFLICT (user_id) DO UPDATE SET total = workflow_counts.total + 1")
    drop = "UPDATE workflow_counts SET total = total - 1 WHERE user_id = OLD.user_id"
    if conn.dialect.name == "postgresql":
        conn.execute(text(
            "CREATE OR REPLACE FUNCTION workflow_counts_keep() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"IF TG_OP = 'INSERT' THEN {bump}; ELSE {drop}; END IF; RETURN NULL; END $$"))
        conn.execute(text("DROP TRIGGER IF EXISTS workflow_counts_keep ON workflows"))
        conn.execute(text("CREATE TRIGGER workflow_counts_keep AFTER INSERT OR DELETE ON workflows "
                          "FOR EACH ROW EXECUTE FUNCTION workflow_counts_keep()"))
    else:
        conn.execute(text(f"CREATE TRIGGER IF NOT EXISTS workflow_counts_insert AFTER INSERT ON workflows "
                          f"BEGIN {bump}; END"))
        conn.execute(text(f"CREATE TRIGGER IF NOT EXISTS workflow_counts_delete AFTER DELETE ON workflows "
                          f"BEGIN {drop}; END"))


def _v8_user_event_numbers(conn: Connection) -> None:
    """Per-user event numbers (services.scheduler.db.event_numbers): workflow_events gets its
    owner and `user_seq`, existing rows numbered per user in (created_at, workflow_id, seq)
    order; `event_numbers` holds each user's last number given out."""
    _add_columns(conn, "workflow_events", {"user_id": "VARCHAR NOT NULL DEFAULT ''",
                                           "user_seq": "BIGINT NOT NULL DEFAULT 0"})
    conn.execute(text(
        "UPDATE workflow_events SET user_id = numbered.user_id, user_seq = numbered.n FROM ("
        "SELECT e.workflow_id, e.seq, w.user_id, ROW_NUMBER() OVER ("
        "PARTITION BY w.user_id ORDER BY e.created_at, e.workflow_id, e.seq) AS n "
        "FROM workflow_events e JOIN workflows w ON w.id = e.workflow_id) AS numbered "
        "WHERE workflow_events.workflow_id = numbered.workflow_id AND workflow_events.seq = numbered.seq"))
    conn.execute(text("CREATE UNIQUE INDEX IF NOT EXISTS ix_workflow_events_user_seq "
                      "ON workflow_events (user_id, user_seq)"))
    conn.execute(text("CREATE TABLE IF NOT EXISTS event_numbers "
                      "(user_id VARCHAR PRIMARY KEY, last_user_seq BIGINT NOT NULL)"))
    conn.execute(text("DELETE FROM event_numbers"))
    conn.execute(text("INSERT INTO event_numbers (user_id, last_user_seq) "
                      "SELECT user_id, max(user_seq) FROM workflow_events GROUP BY user_id"))


MIGRATIONS: list[tuple[int, str, Callable[[Connection], None]]] = [
    (1, "initial schema", _v1_initial),
    (2, "index of the placement queue", _v2_pending_index),
    (3, "runners registered by endpoint", _v3_runner_endpoints),
    (4, "templates", lambda conn: _create_tables(conn, models.TemplateRow)),
    (5, "token names and revocation", lambda conn: _add_columns(
        conn, "tokens", {"name": "VARCHAR NOT NULL DEFAULT ''", "revoked_at": "DATETIME"})),
    (6, "idempotency keys", lambda conn: _create_tables(conn, models.IdempotencyRow)),
    (7, "per-user workflow counts and list indexes", _v7_workflow_counts),
    (8, "per-user event numbers", _v8_user_event_numbers),
    (9, "webhooks", lambda conn: _create_tables(
        conn, models.WebhookEndpointRow, models.WebhookUserSecretRow, models.WorkflowWebhookRow,
        models.WebhookCursorRow, models.WebhookDeliveryRow, models.WebhookAttemptRow)),
]


# pg_advisory_xact_lock key of a migration run ("cfmigrat" as a big-endian int64).
MIGRATION_LOCK_KEY = int.from_bytes(b"cfmigrat", "big") - 2**63


def _migrate(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
    elif conn.dialect.name == "sqlite":
        # The driver starts no transaction before DDL: take the write lock now (busy_timeout waits).
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    conn.execute(text("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, name TEXT)"))
    done = {row[0] for row in conn.execute(text("SELECT version FROM schema_version"))}
    for version, name, step in MIGRATIONS:
        if version in done:
            continue
        log.info("migrating database to version %d (%s)", version, name)
        step(conn)
        conn.execute(text("INSERT INTO schema_version (version, name) VALUES (:v, :n)"), {"v": version, "n": name})


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
                    await conn.run_sync(_migrate)
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
