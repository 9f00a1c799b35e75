"""The database adapter under cancellation: every gRPC call that the client abandons cancels
its handler, often in the middle of a query. The work must finish, nothing may be left
hanging, and the database must still close."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from comfyfleet.scheduler.v1 import workflow_pb2

from services.scheduler.core.state import Status
from services.scheduler.db.engine import Database
from services.scheduler.db.identity_store import IdentityStore
from services.scheduler.db.models import OutputRow, WorkflowRow
from services.scheduler.db.workflow_store import WorkflowStore
from services.scheduler.records import utcnow
from services.scheduler.workflows import log_event

pytestmark = pytest.mark.timeout(20)


async def new_workflow(db: Database) -> WorkflowRow:
    user = await IdentityStore(db).create_user("dev")
    now = utcnow()
    row = WorkflowRow(id="wf-1", user_id=user.id, name="w", status=Status.ACCEPTED.value, workflow_json="{}",
                      created_at=now, updated_at=now)
    return (await WorkflowStore(db).create(row)).row


def other_tasks() -> set[asyncio.Task[object]]:
    return {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}


async def test_reads_cancelled_at_any_point_leave_nothing_behind(db: Database) -> None:
    store = WorkflowStore(db)
    await new_workflow(db)
    for i in range(60):
        call = asyncio.create_task(store.events_after("wf-1", 0))
        await asyncio.sleep((i % 12) * 0.0002)  # somewhere in the query
        call.cancel()
        await asyncio.sleep(0)
        call.cancel()  # and again while it unwinds, as a server shutting down does
        with contextlib.suppress(asyncio.CancelledError):
            await call
    # the queries the cancelled calls left behind finish by themselves
    for _ in range(100):
        if not other_tasks():
            break
        await asyncio.sleep(0.01)
    assert other_tasks() == set()
    # and the pool still works
    assert [e.seq for e in await store.events_after("wf-1", 0)] == [1]


async def test_a_change_whose_caller_is_cancelled_is_still_made_once(db: Database) -> None:
    store = WorkflowStore(db)
    await new_workflow(db)

    def mutate(row: WorkflowRow, _outputs: list[OutputRow]) -> list[workflow_pb2.WorkflowEvent]:
        return [log_event("hello")]

    call = asyncio.create_task(store.change("wf-1", mutate))
    await asyncio.sleep(0)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await asyncio.wait_for(db.close(), 5)  # waits for the change it left behind
    reopened = WorkflowStore(db)
    events = await reopened.events_after("wf-1", 0)
    assert [(e.seq, e.WhichOneof("kind")) for e in events] == [(1, "status"), (2, "log")]
    row, _ = await reopened.get("wf-1")
    assert row.last_seq == 2
