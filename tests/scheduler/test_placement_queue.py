"""PendingQueue: the placement batch is bounded, fair across users, and read through the index."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import text

from services.scheduler.core.placement import Priority
from services.scheduler.core.state import Status
from services.scheduler.db import pending_queue
from services.scheduler.db.engine import Database
from services.scheduler.db.identity_store import IdentityStore
from services.scheduler.db.models import WorkflowRow
from services.scheduler.db.pending_queue import PendingQueue
from services.scheduler.records import utcnow

pytestmark = pytest.mark.timeout(30)

T0 = utcnow()


async def add(db: Database, user_id: str, count: int, *, start: int = 0, priority: int = Priority.NORMAL,
              status: Status = Status.ACCEPTED, runner_id: str | None = None, prefix: str = "") -> None:
    async with db.sessions() as s, s.begin():
        for i in range(start, start + count):
            at = T0 + timedelta(milliseconds=i)
            s.add(WorkflowRow(id=f"{prefix or user_id}-{i:05}", user_id=user_id, name="w", status=status.value,
                              priority=priority, workflow_json="{}", runner_id=runner_id, created_at=at,
                              updated_at=at))


async def users(db: Database, *names: str) -> list[str]:
    identity = IdentityStore(db)
    return [(await identity.create_user(n)).id for n in names]


async def test_one_users_backlog_does_not_hide_another_users_single_workflow(db: Database) -> None:
    alice, bob = await users(db, "alice", "bob")
    await add(db, alice, 3000)
    await add(db, bob, 1, start=5000)  # arrived after all of alice's
    batch = await PendingQueue(db).batch(50)
    per_user = Counter(r.user_id for r in batch)
    # 2 users -> each gets up to ceil(50 / 2) = 25: alice 25 (her oldest), bob his 1
    assert per_user == {alice: 25, bob: 1}
    assert [r.id for r in batch if r.user_id == alice] == [f"{alice}-{i:05}" for i in range(25)]


async def test_only_waiting_workflows_every_priority_oldest_first(db: Database) -> None:
    (alice,) = await users(db, "alice")
    await add(db, alice, 3, priority=Priority.LOW, prefix="low")
    await add(db, alice, 2, start=10, priority=Priority.HIGH, prefix="high")
    await add(db, alice, 5, start=20, status=Status.COMPLETED, prefix="done")
    await add(db, alice, 2, start=30, status=Status.QUEUED, runner_id="r1", prefix="queued")
    await add(db, alice, 1, start=40, runner_id="r1", prefix="assigned")  # accepted, being assigned
    batch = await PendingQueue(db).batch(10)
    assert [r.id for r in batch] == ["high-00010", "high-00011", "low-00000", "low-00001", "low-00002"]


async def test_more_users_than_the_batch_holds_take_turns(db: Database) -> None:
    many = await users(db, *(f"u{i:02}" for i in range(7)))
    for u in many:
        await add(db, u, 3)
    queue = PendingQueue(db)
    seen: list[set[str]] = []
    for _ in range(3):
        batch = await queue.batch(3)  # 3 users per pass, 1 workflow each
        assert len(batch) == 3
        seen.append({r.user_id for r in batch})
    # passes: users 0-2, 3-5, then 6 and (wrapping) 0, 1: all 7 served within 3 passes
    assert set().union(*seen) == set(many)


async def test_the_batch_reads_through_the_index_not_the_table(db: Database) -> None:
    (alice,) = await users(db, "alice")
    await add(db, alice, 10)
    async with db.engine.connect() as conn:
        for query in (pending_queue._USERS, pending_queue._OLDEST):
            plan = (await conn.execute(text(f"EXPLAIN QUERY PLAN {query.text}"), {
                "status": "accepted", "priority": 2, "after": "", "max_users": 10, "user_id": alice, "per_user": 5,
            })).all()
            details = " | ".join(str(row[-1]) for row in plan)
            assert "ix_workflows_pending" in details, details
            # every read of the workflows table is an index SEARCH; the only SCAN is of the CTE
            scans = [str(row[-1]) for row in plan if str(row[-1]).startswith("SCAN")]
            assert all(s.split()[1] in ("h", "heads", "CONSTANT") for s in scans), details


async def test_a_small_batch_is_read_on_the_loop_and_a_large_one_on_the_reader_thread(db: Database) -> None:
    (alice,) = await users(db, "alice")
    await add(db, alice, 40)
    queue = PendingQueue(db)
    read_by: list[str] = []
    real = queue._batch

    def recorded(conn: Any, limit: int) -> Any:
        read_by.append(threading.current_thread().name)
        return real(conn, limit)

    queue._batch = recorded  # type: ignore[method-assign]
    small = await queue.batch(pending_queue.SHORT_READ_LIMIT)
    large = await queue.batch(pending_queue.SHORT_READ_LIMIT + 1)
    assert read_by[0] == threading.current_thread().name  # the loop's own thread: no hop
    assert read_by[1].startswith("sqlite-read")
    # the same rows either way, from the same committed state
    assert [r.id for r in small] == [f"{alice}-{i:05}" for i in range(pending_queue.SHORT_READ_LIMIT)]
    assert [r.id for r in large] == [f"{alice}-{i:05}" for i in range(pending_queue.SHORT_READ_LIMIT + 1)]
    assert not queue.read_all and (await queue.batch(64)) and queue.read_all
