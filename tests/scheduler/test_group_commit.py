"""Group commit (Database.submit, db/changes.py): creates and changes queued together share one
transaction, and each still gets its own answer or error; a burst of runner events keeps every
workflow's seq gapless and in arrival order, and ignores repeats and stale attempts."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from comfyfleet.runner.v1 import runner_event_pb2 as ev
from comfyfleet.scheduler.v1 import workflow_pb2, workflow_service_pb2
from sqlalchemy import text

from services.scheduler.core.state import Status
from services.scheduler.db.creates import OpenLimitReached
from services.scheduler.db.engine import Database
from services.scheduler.db.identity_store import IdentityStore
from services.scheduler.db.models import OutputRow, WorkflowRow
from services.scheduler.db.workflow_store import WorkflowStore
from services.scheduler.errors import WorkflowExists, WorkflowNotFound
from services.scheduler.idempotency import Claim, KeyReused
from services.scheduler.records import utcnow
from services.scheduler.workflows import log_event, status_event

from .harness import Scheduler, bearer

pytestmark = pytest.mark.timeout(30)


def new_row(user_id: str, workflow_id: str | None = None) -> WorkflowRow:
    now = utcnow()
    return WorkflowRow(id=workflow_id or str(uuid.uuid4()), user_id=user_id, name="w", status=Status.ACCEPTED.value,
                       workflow_json="{}", created_at=now, updated_at=now)


async def committed(db: Database, sql: str, **params: Any) -> list[Any]:
    async with db.engine.connect() as conn:
        return list((await conn.execute(text(sql), params)).all())


async def test_concurrent_creates_share_a_transaction_and_a_bad_one_fails_alone(db: Database) -> None:
    store = WorkflowStore(db)
    user = (await IdentityStore(db).create_user("dev")).id
    taken = (await store.create(new_row(user))).row.id
    first = await store.create(new_row(user), Claim("key-1", "request-a"))
    batches = db.batches

    good = [new_row(user) for _ in range(20)]
    calls = [store.create(row) for row in good[:10]]
    calls += [
        store.create(new_row(user, taken)),  # the id is taken
        store.create(new_row(user), Claim("key-1", "request-b")),  # the key, for another request
        store.create(new_row(user), Claim("key-1", "request-a")),  # the same request again: replayed
        store.create(new_row(user), max_open=1),  # over the open-workflow limit
        store.create(new_row("no-such-user")),  # a database error (foreign key): rerun alone
    ]
    calls += [store.create(row) for row in good[10:]]
    answers = await asyncio.gather(*calls, return_exceptions=True)

    assert db.batches == batches + 1  # all queued in one tick: one transaction (then reruns alone)
    assert [a.row.id for a in answers[:10] + answers[15:]] == [r.id for r in good]  # type: ignore[union-attr]
    assert isinstance(answers[10], WorkflowExists)
    assert isinstance(answers[11], KeyReused)
    assert answers[12].replayed is not None and answers[12].replayed.id == first.row.id  # type: ignore[union-attr]
    assert isinstance(answers[13], OpenLimitReached) and answers[13].used == 2 + 10  # the batch's own count too
    assert isinstance(answers[14], Exception) and "FOREIGN KEY" in str(answers[14]).upper()
    stored = {r[0] for r in await committed(db, "SELECT id FROM workflows")}
    assert stored == {taken, first.row.id} | {r.id for r in good}
    # Every created workflow has its first event, numbered per user without gaps.
    numbers = [r[0] for r in await committed(db, "SELECT user_seq FROM workflow_events ORDER BY user_seq")]
    assert numbers == list(range(1, len(stored) + 1))


def add_log(message: str) -> Any:
    def mutate(row: WorkflowRow, _outputs: list[OutputRow]) -> list[workflow_pb2.WorkflowEvent]:
        return [log_event(message)]
    return mutate


def fail(row: WorkflowRow, _outputs: list[OutputRow]) -> list[workflow_pb2.WorkflowEvent]:
    row.name = "changed by a mutation that then failed"
    raise ValueError("no")


def store_output(workflow_id: str, key: str) -> OutputRow:
    return OutputRow(id=str(uuid.uuid4()), workflow_id=workflow_id, node_id="9", filename=key, object_key=key,
                     size_bytes=1, sha256="", content_type="image/png", created_at=utcnow())


async def test_a_burst_of_changes_to_several_workflows_keeps_each_ones_order(db: Database) -> None:
    store = WorkflowStore(db)
    user = (await IdentityStore(db).create_user("dev")).id
    ids = [(await store.create(new_row(user))).row.id for _ in range(4)]
    batches = db.batches

    queued = []
    for step in range(8):
        for workflow_id in ids:
            queued.append(store.change_later(workflow_id, add_log(f"{workflow_id} {step}")))
        if step == 3:
            queued.append(store.change_later(ids[0], fail))  # fails alone, leaves no trace
            queued.append(store.change_later("no-such-workflow", add_log("x")))
    answers = await asyncio.gather(*queued, return_exceptions=True)

    assert db.batches == batches + 1
    assert sum(isinstance(a, ValueError) for a in answers) == 1
    assert sum(isinstance(a, WorkflowNotFound) for a in answers) == 1
    for workflow_id in ids:
        rows = await committed(db, "SELECT seq, payload FROM workflow_events WHERE workflow_id = :w ORDER BY seq",
                               w=workflow_id)
        assert [seq for seq, _ in rows] == list(range(1, 10))  # gapless: the failed change took no number
        logs = [workflow_pb2.WorkflowEvent.FromString(p).log.message for _, p in rows[1:]]
        assert logs == [f"{workflow_id} {step}" for step in range(8)]
        assert (await store.get(workflow_id))[0].last_seq == 9
    assert (await store.get(ids[0]))[0].name == "w"
    numbers = [r[0] for r in await committed(db, "SELECT user_seq FROM workflow_events ORDER BY user_seq")]
    assert numbers == list(range(1, 4 + 32 + 1))


async def test_outputs_dropped_in_a_batch_take_the_ones_added_before_it_in_the_same_batch(db: Database) -> None:
    store = WorkflowStore(db)
    user = (await IdentityStore(db).create_user("dev")).id
    workflow_id = (await store.create(new_row(user))).row.id
    await store.change(workflow_id, add_log("stored"), new_outputs=[store_output(workflow_id, "a")])

    def seen(expected: list[str]) -> Any:
        def mutate(row: WorkflowRow, outputs: list[OutputRow]) -> list[workflow_pb2.WorkflowEvent]:
            assert sorted(o.object_key for o in outputs) == expected
            return [status_event()]
        return mutate

    await asyncio.gather(
        store.change_later(workflow_id, seen(["a", "b"]), new_outputs=[store_output(workflow_id, "b")]),
        store.change_later(workflow_id, seen([]), drop_outputs=True),  # a requeue: "a" and "b" go
        store.change_later(workflow_id, seen(["c"]), new_outputs=[store_output(workflow_id, "c")]),
        store.change_later(workflow_id, seen(["c"])),
    )
    row, outputs = await store.get(workflow_id)
    assert [o.object_key for o in outputs] == ["c"]
    assert row.last_seq == 6


# -- through a runner session -------------------------------------------------------------------


async def test_a_burst_of_runner_events_for_several_workflows_applies_in_order(scheduler: Scheduler) -> None:
    runner = scheduler.runner("burst", slots=3)
    await runner.connect()
    meta = bearer(scheduler.dev_token)
    graph = '{"1": {"class_type": "EmptyImage", "inputs": {}}}'
    ids = []
    for n in range(3):
        reply = await scheduler.workflows.CreateWorkflow(
            workflow_service_pb2.CreateWorkflowRequest(name=f"w{n}", workflow_json=graph), metadata=meta)
        ids.append(reply.workflow.id)
    assigned = {a.workflow_id: a.attempt for a in [await runner.assignment() for _ in ids]}
    assert set(assigned) == set(ids)

    # Everything at once, interleaved across the workflows, without waiting for anything.
    for workflow_id in ids:
        runner.send(workflow_id, assigned[workflow_id], uploaded=ev.Uploaded())
    for workflow_id in ids:
        runner.send(workflow_id, assigned[workflow_id], queued=ev.Queued(prompt_id="p", queue_number=0))
        runner.send(workflow_id, assigned[workflow_id], running=ev.Running(prompt_id="p"))
    for value in range(1, 11):
        for workflow_id in ids:
            runner.send(workflow_id, assigned[workflow_id], progress=ev.Progress(node_id="1", value=value, max=10))
    runner.send(ids[0], assigned[ids[0]], runner_seq=3, progress=ev.Progress(node_id="1", value=99, max=10))  # repeat
    runner.send(ids[1], assigned[ids[1]] + 1, progress=ev.Progress(node_id="1", value=98, max=10))  # no such attempt
    for workflow_id in ids:
        runner.send(workflow_id, assigned[workflow_id], completed=ev.Completed())
    await runner.close()  # returns once the scheduler has applied everything sent

    for workflow_id in ids:
        reply = await scheduler.workflows.GetWorkflow(workflow_service_pb2.GetWorkflowRequest(id=workflow_id),
                                                      metadata=meta)
        assert reply.workflow.status == workflow_pb2.WORKFLOW_STATUS_COMPLETED
        events = []
        async for message in scheduler.workflows.WatchWorkflow(
                workflow_service_pb2.WatchWorkflowRequest(id=workflow_id, from_start=True), metadata=meta):
            events.append(message.event)
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        progress = [e.progress.value for e in events if e.WhichOneof("kind") == "progress"]
        assert progress == list(range(1, 11))  # in order, the repeat and the stale attempt ignored
        statuses = [e.status.workflow.status for e in events if e.WhichOneof("kind") == "status"]
        assert statuses == [workflow_pb2.WORKFLOW_STATUS_ACCEPTED, workflow_pb2.WORKFLOW_STATUS_UPLOADED,
                            workflow_pb2.WORKFLOW_STATUS_QUEUED, workflow_pb2.WORKFLOW_STATUS_RUNNING,
                            workflow_pb2.WORKFLOW_STATUS_COMPLETED]
