"""The database adapter on both dialects: the numbered migrations create a schema and
upgrade an older one; concurrent changes of one workflow keep its event log gapless."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from services.scheduler.core.state import Status
from services.scheduler.db.engine import Database
from services.scheduler.db.identity_store import API, IdentityStore
from services.scheduler.db.migrations import MIGRATIONS
from services.scheduler.db.models import WorkflowRow
from services.scheduler.db.workflow_store import WorkflowStore
from services.scheduler.errors import Unauthenticated
from services.scheduler.records import utcnow
from services.scheduler.workflows import log_event

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/s.db"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
async def db(url: str) -> AsyncIterator[Database]:
    database = Database(url)
    yield database
    await asyncio.wait_for(database.close(), 5)


async def versions(db: Database) -> list[int]:
    async with db.engine.connect() as conn:
        return [v for (v,) in await conn.execute(text("SELECT version FROM schema_version ORDER BY version"))]


async def test_migrations_create_the_schema_once_even_when_two_processes_start_together(url: str) -> None:
    first, second = Database(url), Database(url)
    try:
        await asyncio.gather(first.migrate(), second.migrate())
        await first.migrate()
        assert await versions(first) == [v for v, _, _ in MIGRATIONS]
        # The schema works: a user with an expiring token authenticates.
        identity = IdentityStore(first)
        user = await identity.create_user("dev")
        token = await identity.issue_token(user.id, API, timedelta(hours=1))
        assert (await identity.authenticate(token, API)).id == user.id
    finally:
        await first.close()
        await second.close()


async def test_migrations_upgrade_a_database_without_token_revocation(db: Database) -> None:
    """A database without step 5 (tokens without name and revoked_at) is brought up to date,
    with the time column in the dialect's own type, and revocation works on it."""
    await db.migrate()
    async with db.engine.begin() as conn:
        await conn.execute(text("ALTER TABLE tokens DROP COLUMN revoked_at"))
        await conn.execute(text("ALTER TABLE tokens DROP COLUMN name"))
        await conn.execute(text("DELETE FROM schema_version WHERE version = 5"))
    assert 5 not in await versions(db)

    await db.migrate()

    assert await versions(db) == [v for v, _, _ in MIGRATIONS]
    identity = IdentityStore(db)
    user = await identity.create_user("dev")
    token = await identity.issue_token(user.id, API, name="laptop")
    revoked = await identity.revoke_token(token)
    assert revoked is not None and revoked.revoked_at is not None and revoked.name == "laptop"
    with pytest.raises(Unauthenticated, match="token revoked"):
        await identity.authenticate(token, API)


async def test_concurrent_changes_of_one_workflow_number_its_events_without_gaps(db: Database) -> None:
    await db.migrate()
    user = await IdentityStore(db).create_user("dev")
    now = utcnow()
    store = WorkflowStore(db)
    row = WorkflowRow(id="wf-1", user_id=user.id, name="w", status=Status.ACCEPTED.value, workflow_json="{}",
                      created_at=now, updated_at=now)
    await store.create(row)

    changes = await asyncio.gather(*(
        store.change("wf-1", lambda _row, _outputs, n=n: [log_event(f"step {n}")]) for n in range(20)))

    assert sorted(c.events[0].seq for c in changes) == list(range(2, 22))
    events = await store.events_after("wf-1", 0)
    assert [e.seq for e in events] == list(range(1, 22))
    assert sorted(e.log.message for e in events[1:]) == sorted(f"step {n}" for n in range(20))
    assert (await store.get("wf-1"))[0].last_seq == 21


async def open_counts(db: Database) -> dict[str, int]:
    async with db.engine.connect() as conn:
        rows = await conn.execute(text("SELECT user_id, total FROM open_workflow_counts"))
        return {user_id: int(total) for user_id, total in rows if total}


async def add_workflows(db: Database, user_id: str, statuses: list[Status], *, prefix: str) -> None:
    store, now = WorkflowStore(db), utcnow()
    for i, status in enumerate(statuses):
        row = WorkflowRow(id=f"{prefix}-{i}", user_id=user_id, name="w", status=status.value, workflow_json="{}",
                          created_at=now, updated_at=now)
        await store.create(row)


async def test_open_workflow_counts_follow_every_insert_status_change_and_delete(db: Database) -> None:
    await db.migrate()
    identity, store = IdentityStore(db), WorkflowStore(db)
    alice, bob = (await identity.create_user("alice")).id, (await identity.create_user("bob")).id
    await add_workflows(db, alice, [Status.ACCEPTED, Status.ACCEPTED, Status.ACCEPTED], prefix="a")
    await add_workflows(db, bob, [Status.ACCEPTED, Status.COMPLETED], prefix="b")  # (a row written finished)
    assert await open_counts(db) == {alice: 3, bob: 1}

    def finish(row: WorkflowRow, _outputs: object) -> list[object]:
        row.status = Status.CANCELLED.value
        return []

    await store.change("a-0", finish)  # type: ignore[arg-type]
    await store.change("a-1", lambda row, _o: [log_event("still open")])  # no status change
    assert (await open_counts(db), await store.count_open(alice)) == ({alice: 2, bob: 1}, 2)
    await store.delete("a-0", alice)  # finished: was not counted
    async with db.engine.begin() as conn:  # whoever writes the table: another process, an admin
        await conn.execute(text("UPDATE workflows SET status = 'failed' WHERE id = 'a-1'"))
        await conn.execute(text("UPDATE workflows SET status = 'queued' WHERE id = 'b-1'"))  # reopened
        await conn.execute(text("DELETE FROM workflow_events WHERE workflow_id = 'a-2'"))
        await conn.execute(text("DELETE FROM workflows WHERE id = 'a-2'"))
    assert await open_counts(db) == {bob: 2}
    assert await store.count_open(alice) == 0


async def test_the_migration_counts_the_open_workflows_of_an_older_database(db: Database) -> None:
    await db.migrate()
    (alice,) = [(await IdentityStore(db).create_user("alice")).id]
    await add_workflows(db, alice, [Status.RUNNING, Status.ACCEPTED, Status.FAILED], prefix="a")
    async with db.engine.begin() as conn:  # as a database from before step 10
        if conn.dialect.name == "postgresql":
            await conn.execute(text("DROP TRIGGER open_workflow_counts_keep ON workflows"))
        else:
            for name in ("insert", "delete", "finish", "reopen"):
                await conn.execute(text(f"DROP TRIGGER open_workflow_counts_{name}"))
        await conn.execute(text("DROP TABLE open_workflow_counts"))
        await conn.execute(text("DELETE FROM schema_version WHERE version = 10"))

    await db.migrate()

    assert await open_counts(db) == {alice: 2}
    await add_workflows(db, alice, [Status.ACCEPTED], prefix="b")  # and the triggers are back
    assert await WorkflowStore(db).count_open(alice) == 3
