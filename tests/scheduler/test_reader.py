"""Database.read: reads of a SQLite file run on a thread and a connection of their own. They see
what was committed before them, they do not wait for a write transaction in progress, and they
cannot write. Reads of a few seeks run on the loop instead (Database.read_short)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import OperationalError

from services.scheduler.db.engine import Database
from services.scheduler.db.identity_store import IdentityStore
from services.scheduler.db.workflow_store import WorkflowStore

from .test_store import new_workflow

pytestmark = pytest.mark.timeout(30)

INSERT = ("INSERT INTO users (id, name, email, tier, is_admin, created_at, updated_at) "
          "VALUES ('{id}', '{name}', '', 'free', 0, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)")


def users(conn: Connection) -> set[str]:
    return {name for (name,) in conn.execute(text("SELECT name FROM users"))}


async def test_a_read_sees_what_was_committed_before_it(db: Database) -> None:
    await IdentityStore(db).create_user("before")
    assert "before" in await db.read(users)
    await db.submit(lambda conn: conn.execute(text(
        INSERT.format(id="u2", name="written"))))
    assert {"before", "written"} <= await db.read(users)


async def test_a_read_does_not_wait_for_a_write_in_progress(db: Database) -> None:
    await IdentityStore(db).create_user("someone")
    # Another connection holds SQLite's write lock with a change not yet committed.
    writer = sqlite3.connect(db.url.split(":///", 1)[1], isolation_level=None, check_same_thread=False)
    try:
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("UPDATE users SET name = 'renamed' WHERE name = 'someone'")
        # The read answers anyway, with the state before the uncommitted write.
        assert "someone" in await asyncio.wait_for(db.read(users), 5)
        writer.execute("COMMIT")
    finally:
        writer.close()
    assert "renamed" in await db.read(users)


async def test_a_read_cannot_write(db: Database) -> None:
    with pytest.raises(OperationalError, match="readonly"):
        await db.read(lambda conn: conn.execute(text(
            INSERT.format(id="u3", name="sneaky"))))
    assert "sneaky" not in await db.read(users)


async def test_a_workflow_and_its_snapshot_are_read_on_the_loop_and_a_log_page_on_the_reader(db: Database) -> None:
    """GetWorkflow and a watch's snapshot are two index seeks (Database.read_short): they answer
    while the reader thread is busy with a long read; a page of the log waits for it."""
    row = await new_workflow(db)
    store = WorkflowStore(db)
    busy, release = threading.Event(), threading.Event()

    def long_read(_conn: Connection) -> None:
        busy.set()
        release.wait(10)

    reading = asyncio.ensure_future(db.read(long_read))
    try:
        await asyncio.to_thread(busy.wait, 5)
        got, outputs = await asyncio.wait_for(store.get(row.id, row.user_id), 2)
        assert (got.id, outputs) == (row.id, [])
        got, _outputs, events = await asyncio.wait_for(store.watch_start(row.id, row.user_id, None), 2)
        assert (got.last_seq, events) == (1, [])
        page = asyncio.ensure_future(store.watch_start(row.id, row.user_id, 0))
        await asyncio.sleep(0.2)
        assert not page.done()  # behind the long read, on the reader thread
    finally:
        release.set()
        await reading
    assert [e.seq for e in (await page)[2]] == [1]
