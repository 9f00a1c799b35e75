"""The fleet-wide watch (EventService.WatchEvents) and the per-user event numbers behind it:
real gRPC against the scheduler on port 0, on a SQLite file (tests/postgres runs them again on
Postgres).

Changes are made the way the scheduler makes them (WorkflowStore.change, then EventHub.publish),
many at once, so the numbering and the join of stored and live events are exercised under
concurrency; what is asserted is the stream a client reads: every user_seq once, in order.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from comfyfleet.scheduler.v1 import event_service_pb2, workflow_pb2
from sqlalchemy import text

from services.scheduler.db.engine import Database
from services.scheduler.db.event_numbers import UserEventLog
from services.scheduler.db.identity_store import IdentityStore
from services.scheduler.db.models import WorkflowRow
from services.scheduler.db.workflow_store import Change, WorkflowStore
from services.scheduler.records import utcnow
from services.scheduler.workflows import log_event

from .harness import WAIT, Scheduler, bearer
from .test_service import SIMPLE, create, request

pytestmark = pytest.mark.timeout(30)


@dataclass
class Stream:
    """A WatchEvents call read in the background."""

    started_at: int | None = None
    events: list[workflow_pb2.WorkflowEvent] = field(default_factory=list)
    arrived: asyncio.Condition = field(default_factory=asyncio.Condition)
    ended: bool = False
    error: grpc.aio.AioRpcError | None = None
    task: asyncio.Task[None] | None = None

    @property
    def numbers(self) -> list[int]:
        return [e.user_seq for e in self.events]

    async def until(self, user_seq: int) -> None:
        async with self.arrived:
            await asyncio.wait_for(self.arrived.wait_for(
                lambda: self.ended or (bool(self.events) and self.events[-1].user_seq >= user_seq)), WAIT)
        assert self.numbers and self.numbers[-1] >= user_seq, (self.numbers, self.error)

    async def until_started(self) -> int:
        async with self.arrived:
            await asyncio.wait_for(self.arrived.wait_for(lambda: self.started_at is not None or self.ended), WAIT)
        assert self.started_at is not None, self.error
        return self.started_at

    async def until_ended(self) -> None:
        assert self.task is not None
        await asyncio.wait_for(asyncio.shield(self.task), WAIT)

    async def stop(self) -> None:
        assert self.task is not None
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


def watch_events(s: Scheduler, token: str, *, after: int = 0, replay: bool = True, max_replay: int = 0) -> Stream:
    stream = Stream()
    req = event_service_pb2.WatchEventsRequest(after_user_seq=after, replay=replay, max_replay=max_replay)

    async def read() -> None:
        try:
            async for response in s.events.WatchEvents(req, metadata=bearer(token)):
                async with stream.arrived:
                    if response.WhichOneof("message") == "started_at_user_seq":
                        stream.started_at = response.started_at_user_seq
                    else:
                        stream.events.append(response.event)
                    stream.arrived.notify_all()
        except grpc.aio.AioRpcError as err:
            stream.error = err
        finally:
            async with stream.arrived:
                stream.ended = True
                stream.arrived.notify_all()

    stream.task = asyncio.create_task(read())
    return stream


async def change(s: Scheduler, workflow_id: str, n_events: int = 1, *, publish: bool = True) -> Change:
    """A change of `n_events` log events, committed and published as the scheduler does."""
    assert s.execution is not None
    done = await s.execution.store.change(
        workflow_id, lambda _row, _outputs: [log_event(f"{workflow_id} {i}") for i in range(n_events)])
    if publish:
        s.execution.hub.publish(done.events)
    return done


async def stored_numbers(s: Scheduler) -> dict[str, list[tuple[int, str, int]]]:
    """(user_seq, workflow_id, seq) of every stored event, by user."""
    assert s.execution is not None
    async with s.execution.store.db.engine.connect() as conn:
        rows = (await conn.execute(text(
            "SELECT user_id, user_seq, workflow_id, seq FROM workflow_events ORDER BY user_id, user_seq"))).all()
    by_user: dict[str, list[tuple[int, str, int]]] = {}
    for user_id, user_seq, workflow_id, seq in rows:
        by_user.setdefault(user_id, []).append((user_seq, workflow_id, seq))
    return by_user


async def workflows_of_two_users(s: Scheduler) -> tuple[str, list[str], str, list[str]]:
    """(token a, 3 workflow ids of a, token b, 1 workflow id of b)."""
    other = await s.new_user_token("other")
    mine = [(await create(s, request(SIMPLE))).id for _ in range(3)]
    theirs = [(await create(s, request(SIMPLE), token=other)).id]
    return s.dev_token, mine, other, theirs


async def test_numbers_are_gapless_and_per_user_across_workflows_and_concurrent_changes(scheduler: Scheduler) -> None:
    _, mine, _, theirs = await workflows_of_two_users(scheduler)
    rng = random.Random(7)
    plan = [(rng.choice(mine + theirs), rng.randint(1, 3)) for _ in range(40)]

    changes = await asyncio.gather(*(change(scheduler, wid, n) for wid, n in plan))

    by_user = await stored_numbers(scheduler)
    assert len(by_user) == 2 and "" not in by_user
    for numbered in by_user.values():
        assert [n for n, _, _ in numbered] == list(range(1, len(numbered) + 1))  # gapless from 1
        for wid in {w for _, w, _ in numbered}:  # a workflow's own order is kept
            seqs = [seq for _, w, seq in numbered if w == wid]
            assert seqs == sorted(seqs)
    total = sum(n for _, n in plan) + 4  # + each workflow's first event
    assert sum(len(v) for v in by_user.values()) == total
    # The committed events carry their numbers and owner (what the hub routes by).
    for done in changes:
        assert all(e.user_seq > 0 and e.user_id == done.row.user_id for e in done.events)


async def test_replay_joins_live_events_without_gap_or_duplicate_and_shows_only_the_callers(
        scheduler: Scheduler) -> None:
    token, mine, other, theirs = await workflows_of_two_users(scheduler)
    for wid in mine:
        await change(scheduler, wid, 2)

    async def keep_changing() -> None:
        for i in range(30):
            await asyncio.gather(change(scheduler, mine[i % 3], 1 + i % 3), change(scheduler, theirs[0]))

    writer = asyncio.create_task(keep_changing())
    await asyncio.sleep(0.05)  # the watch starts while changes are being committed and published
    ours, others = watch_events(scheduler, token), watch_events(scheduler, other)
    await writer
    by_user = await stored_numbers(scheduler)
    me = (await scheduler.identity.authenticate(token, "api")).id
    mine_total, theirs_total = len(by_user[me]), len(by_user[next(u for u in by_user if u != me)])

    await ours.until(mine_total)
    await others.until(theirs_total)

    assert ours.numbers == list(range(1, mine_total + 1))
    assert {e.workflow_id for e in ours.events} == set(mine)
    assert others.numbers == list(range(1, theirs_total + 1))
    assert {e.workflow_id for e in others.events} == set(theirs)
    # The stream carries the stored events themselves: the same (workflow, seq) as the log.
    assert [(e.workflow_id, e.seq) for e in ours.events] == [(w, seq) for _, w, seq in by_user[me]]
    await ours.stop()
    await others.stop()


async def test_a_resumed_watch_gets_exactly_the_events_after_its_cursor(scheduler: Scheduler) -> None:
    _, mine, _, _ = await workflows_of_two_users(scheduler)
    for wid in mine:
        await change(scheduler, wid, 3)  # 3 + 9 = 12 events

    resumed = watch_events(scheduler, scheduler.dev_token, after=7)
    await resumed.until(12)
    await change(scheduler, mine[1], 2)
    await resumed.until(14)

    assert resumed.started_at == 12
    assert resumed.numbers == list(range(8, 15))
    await resumed.stop()


async def test_a_live_watch_starts_after_the_last_number_and_the_replay_bound_keeps_the_newest(
        scheduler: Scheduler) -> None:
    _, mine, _, _ = await workflows_of_two_users(scheduler)
    await change(scheduler, mine[0], 5)  # 3 + 5 = 8 events

    live = watch_events(scheduler, scheduler.dev_token, replay=False)
    bounded = watch_events(scheduler, scheduler.dev_token, max_replay=3)
    assert await live.until_started() == 8
    await bounded.until(8)
    await change(scheduler, mine[2])
    await live.until(9)
    await bounded.until(9)

    assert live.numbers == [9]
    assert bounded.numbers == [6, 7, 8, 9]
    await live.stop()
    await bounded.stop()


async def test_events_published_out_of_order_are_sent_in_order(scheduler: Scheduler) -> None:
    _, mine, _, _ = await workflows_of_two_users(scheduler)
    live = watch_events(scheduler, scheduler.dev_token, replay=False)
    assert await live.until_started() == 3

    first = await change(scheduler, mine[0], 2, publish=False)
    second = await change(scheduler, mine[1], 1, publish=False)
    assert scheduler.execution is not None
    scheduler.execution.hub.publish(second.events)  # 6 arrives before 4 and 5
    await live.until(6)
    scheduler.execution.hub.publish(first.events)  # late: already sent from the log
    await change(scheduler, mine[2])
    await live.until(7)

    assert live.numbers == [4, 5, 6, 7]
    await live.stop()


async def test_a_watcher_that_falls_behind_is_ended_and_resumes_from_its_cursor(scheduler: Scheduler) -> None:
    _, mine, _, _ = await workflows_of_two_users(scheduler)
    assert scheduler.execution is not None
    scheduler.execution.hub.capacity = 4
    fast = watch_events(scheduler, scheduler.dev_token, replay=False)
    await fast.until_started()

    await change(scheduler, mine[0], 10)  # 10 events offered at once: more than the queue holds

    await fast.until_ended()
    assert fast.error is None and len(fast.numbers) < 10  # ended cleanly after what its queue held
    me = (await scheduler.identity.authenticate(scheduler.dev_token, "api")).id
    assert scheduler.execution.hub.user_watcher_count(me) == 0
    cursor = fast.numbers[-1] if fast.numbers else fast.started_at or 0
    resumed = watch_events(scheduler, scheduler.dev_token, after=cursor)
    await resumed.until(13)
    assert fast.numbers + resumed.numbers == list(range(4, 14))
    assert all(e.user_id == me for e in resumed.events)
    await resumed.stop()


async def test_bad_calls_are_refused(scheduler: Scheduler) -> None:
    async def code_of(token: str, **kw: Any) -> grpc.StatusCode:
        stream = watch_events(scheduler, token, **kw)
        await stream.until_ended()
        assert stream.error is not None
        return stream.error.code()

    assert await code_of("not-a-token") == grpc.StatusCode.UNAUTHENTICATED
    assert await code_of(scheduler.dev_token, after=-1) == grpc.StatusCode.INVALID_ARGUMENT


# -- the migration ------------------------------------------------------------------------------------


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path}/m.db"


async def test_the_migration_numbers_the_events_of_an_older_database(database_url: str) -> None:
    """A database from before step 8 (events without user_id/user_seq, no event_numbers) gets
    its events numbered per user in (created_at, workflow_id, seq) order, and numbering goes on
    from there."""
    db = Database(database_url)
    try:
        await db.migrate()
        identity, store = IdentityStore(db), WorkflowStore(db)
        users = [(await identity.create_user(name)).id for name in ("a", "b")]
        start = utcnow() - timedelta(hours=1)
        for i in range(6):  # interleaved in time: a, b, a, b, ...
            at = start + timedelta(minutes=i)
            await store.create(WorkflowRow(id=f"wf-{i}", user_id=users[i % 2], name="w", status="accepted",
                                           workflow_json="{}", created_at=at, updated_at=at))
            await store.change(f"wf-{i}", lambda _r, _o, i=i: [log_event(f"{i}") for _ in range(1 + i % 3)])
        async with db.engine.begin() as conn:
            await conn.execute(text("DROP INDEX ix_workflow_events_user_seq"))
            await conn.execute(text("ALTER TABLE workflow_events DROP COLUMN user_seq"))
            await conn.execute(text("ALTER TABLE workflow_events DROP COLUMN user_id"))
            await conn.execute(text("DROP TABLE event_numbers"))
            await conn.execute(text("DELETE FROM schema_version WHERE version = 8"))

        await db.migrate()

        async with db.engine.connect() as conn:
            rows = (await conn.execute(text(
                "SELECT e.user_id, e.user_seq, w.user_id FROM workflow_events e JOIN workflows w "
                "ON w.id = e.workflow_id ORDER BY e.created_at, e.workflow_id, e.seq"))).all()
        assert all(owner == user_id for user_id, _, owner in rows)
        for user in users:
            assert [n for u, n, _ in rows if u == user] == list(range(1, sum(u == user for u, _, _ in rows) + 1))
        log = UserEventLog(db)
        last_of_a = await log.last_number(users[0])
        assert last_of_a == sum(u == users[0] for u, _, _ in rows) == 2 + 4 + 3  # wf-0, wf-2, wf-4
        done = await store.change("wf-0", lambda _r, _o: [log_event("after")])
        assert [e.user_seq for e in done.events] == [last_of_a + 1]
        replayed = await log.events_after(users[0], last_of_a - 2)
        assert [(e.user_seq, e.user_id) for e in replayed] == [(n, users[0]) for n in range(last_of_a - 1,
                                                                                             last_of_a + 2)]
    finally:
        await db.close()
