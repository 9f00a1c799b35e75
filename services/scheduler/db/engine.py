"""The async engine, SQLite tuning, and the schema migrations.

Migrations are numbered steps recorded in `schema_version`; a new schema change is a new
step appended to MIGRATIONS, never an edit of an old one. The same steps create and upgrade
SQLite and Postgres: write their DDL in the common subset (`DATETIME` in `_add_columns` is
translated for Postgres); on Postgres the run holds a transaction-level advisory lock, so two
processes starting together migrate one after the other.

SQLite runs in WAL mode with one writer at a time (`write_lock`), which is what SQLite
supports anyway. On Postgres `write_lock` is a no-op: transactions and row locks
(`with_for_update` where a row is read, changed and written back) do that job.
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
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlmodel import SQLModel
from sqlmodel.ext.asyncio.session import AsyncSession

from services.common.errors import ComfyfleetError
from services.scheduler.db import models

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


MIGRATIONS: list[tuple[int, str, Callable[[Connection], None]]] = [
    (1, "initial schema", _v1_initial),
    (2, "index of the placement queue", _v2_pending_index),
    (3, "runners registered by endpoint", _v3_runner_endpoints),
    (4, "templates", lambda conn: _create_tables(conn, models.TemplateRow)),
    (5, "token names and revocation", lambda conn: _add_columns(
        conn, "tokens", {"name": "VARCHAR NOT NULL DEFAULT ''", "revoked_at": "DATETIME"})),
    (6, "idempotency keys", lambda conn: _create_tables(conn, models.IdempotencyRow)),
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
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self.sessions = async_sessionmaker(self.engine, class_=AsyncSession, expire_on_commit=False)
        # SQLite has one writer; serialising writes here avoids "database is locked".
        # Postgres has row locks and takes concurrent transactions.
        self.write_lock: contextlib.AbstractAsyncContextManager[Any] = (
            asyncio.Lock() if self.is_sqlite else contextlib.nullcontext())
        # Operations whose callers were cancelled, still finishing (see runs_to_completion).
        self._orphans: set[asyncio.Future[Any]] = set()

    async def migrate(self) -> None:
        async with self.engine.begin() as conn:
            await conn.run_sync(_migrate)

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
        if self._orphans:
            await asyncio.wait(set(self._orphans), timeout=5)
        await self.engine.dispose()


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes in WAL mode
    cur.execute("PRAGMA busy_timeout=5000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


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
