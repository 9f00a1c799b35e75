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
from services.scheduler.db.engine import MIGRATIONS, Database
from services.scheduler.db.identity_store import API, IdentityStore
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
