"""A SQLite file's write transactions run on the loop's thread, and its WAL is checkpointed on a
thread of its own (services.scheduler.db.sqlite_file), against a real file."""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Connection

from services.scheduler.db import sqlite_file
from services.scheduler.db.sqlite_file import CHECKPOINT_EVERY, SqliteFile

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def file(tmp_path: Path) -> AsyncIterator[SqliteFile]:
    f = SqliteFile(f"sqlite:///{tmp_path}/f.db")
    f.write(lambda conn: conn.execute(text("CREATE TABLE t (n INTEGER)")))
    yield f
    await asyncio.wait_for(f.close(), 10)


def count(conn: Connection) -> int:
    return int(conn.execute(text("SELECT count(*) FROM t")).scalar_one())


async def insert_rows(file: SqliteFile, rows: int, *, pause_s: float = 0) -> None:
    """One write transaction per row, letting the loop run between them."""
    for n in range(rows):
        await file.transaction(functools.partial(_insert, n))
        await asyncio.sleep(pause_s)


def _insert(n: int, conn: Connection) -> None:
    conn.execute(text("INSERT INTO t VALUES (:n)"), {"n": n})


async def until_checkpointed(file: SqliteFile) -> None:
    """Until a checkpoint has run (at most 4 s), then until none is running."""
    for _ in range(200):
        if file.checkpoints >= 1:
            break
        await asyncio.sleep(0.02)
    await file.checkpoint_done()


async def test_a_write_runs_on_the_calling_thread_and_commits(file: SqliteFile) -> None:
    seen: list[int] = []

    def work(conn: Connection) -> str:
        seen.append(threading.get_ident())
        conn.execute(text("INSERT INTO t VALUES (1)"))
        return "done"

    assert file.write(work) == "done"
    assert seen == [threading.get_ident()]
    assert await file.read(count) == 1  # committed: another connection sees it


async def test_a_write_that_raises_is_rolled_back(file: SqliteFile) -> None:
    def failing(conn: Connection) -> None:
        conn.execute(text("INSERT INTO t VALUES (1)"))
        raise ValueError("no")

    with pytest.raises(ValueError, match="no"):
        file.write(failing)
    assert await file.read(count) == 0
    file.write(lambda conn: conn.execute(text("INSERT INTO t VALUES (2)")))  # the connection still works
    assert await file.read(count) == 1


async def test_reads_run_on_a_thread_of_their_own(file: SqliteFile) -> None:
    main = threading.get_ident()
    assert await file.read(lambda conn: threading.get_ident()) != main


async def test_the_writer_leaves_checkpoints_to_the_checkpoint_thread(file: SqliteFile, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    assert file.write(lambda conn: conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar_one()) == 0
    threads: list[str] = []
    real = sqlite_file._checkpoint

    def checkpoint(conn: Connection) -> tuple[int, int]:
        threads.append(threading.current_thread().name)
        return real(conn)

    monkeypatch.setattr(sqlite_file, "_checkpoint", checkpoint)
    await insert_rows(file, CHECKPOINT_EVERY * 3)
    await until_checkpointed(file)
    assert file.checkpoints >= 1
    assert threads and all(name.startswith("sqlite-checkpoint") for name in threads)


async def test_the_wal_stays_bounded_under_writes_that_never_pause(file: SqliteFile, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # The thread's checkpoints copy what was there when they began; writes that keep coming keep
    # the WAL from starting over, so past WAL_FRAMES_MAX a write waits for a whole checkpoint.
    monkeypatch.setattr(sqlite_file, "WAL_FRAMES_MAX", 100)
    writes = CHECKPOINT_EVERY * 8
    await insert_rows(file, writes)
    await file.checkpoint_done()
    assert file.checkpoint_waits >= 1
    outside = sqlite3.connect(tmp_path / "f.db")
    try:
        # Each transaction appended at least one frame; without the WAL starting over it would
        # hold them all.
        busy, frames, _copied = outside.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        assert busy == 0 and frames < 100 + CHECKPOINT_EVERY * 2 < writes
        assert outside.execute("SELECT count(*) FROM t").fetchone()[0] == writes
    finally:
        outside.close()


async def test_a_failed_checkpoint_is_retried_by_a_later_write(file: SqliteFile,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    failures = 0
    real = sqlite_file._checkpoint

    def flaky(conn: Connection) -> tuple[int, int]:
        nonlocal failures
        if failures == 0:
            failures += 1
            raise sqlite3.OperationalError("disk I/O error")
        return real(conn)

    monkeypatch.setattr(sqlite_file, "_checkpoint", flaky)
    await insert_rows(file, CHECKPOINT_EVERY * 4, pause_s=0.001)
    await until_checkpointed(file)
    assert failures == 1 and file.checkpoints >= 1
    assert await file.read(count) == CHECKPOINT_EVERY * 4
