"""The group commit's statements on the driver's cursor (db/driver_statements.py): what they
write and read is what Core writes and reads, column for column, and a driver error is
SQLAlchemy's, failing only the change that caused it."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from comfyfleet.scheduler.v1 import workflow_pb2
from sqlalchemy import bindparam, insert
from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from services.scheduler.db.driver_statements import DriverStatement
from services.scheduler.db.engine import Database
from services.scheduler.db.identity_store import IdentityStore
from services.scheduler.db.models import EventRow, OutputRow, WorkflowRow
from services.scheduler.db.workflow_store import WorkflowStore
from services.scheduler.workflows import log_event, status_event

from .test_group_commit import add_log, new_row, store_output

pytestmark = pytest.mark.timeout(30)


STARTED = datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)


def run_everything(row: WorkflowRow, _outputs: list[OutputRow]) -> list[workflow_pb2.WorkflowEvent]:
    """Sets a value of every kind a workflow row holds."""
    row.status = "running"
    row.runner_id = "runner-1"
    row.attempt = 2
    row.queue_number = 7
    row.prompt_id = "p-1"
    row.cancel_requested = True
    row.failure_json = '{"node_id": "9", "exception_message": "m"}'
    row.started_at = STARTED
    return [status_event(), log_event("ran")]


async def read_with_the_orm(db: Database, workflow_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    async with db.sessions() as s:
        row = await s.get(WorkflowRow, workflow_id)
        assert row is not None
        outputs = await s.exec(select(OutputRow).where(OutputRow.workflow_id == workflow_id))
        return row.model_dump(), [o.model_dump() for o in outputs.all()]


async def test_a_change_stores_every_column_as_core_does_and_get_reads_it_back_the_same(db: Database) -> None:
    store = WorkflowStore(db)
    user = (await IdentityStore(db).create_user("dev")).id
    workflow_id = (await store.create(new_row(user))).row.id

    change = await store.change(workflow_id, run_everything, new_outputs=[store_output(workflow_id, "a.png")])

    assert [e.seq for e in change.events] == [2, 3]
    assert [e.user_seq for e in change.events] == [2, 3]
    assert change.events[0].status.workflow.outputs[0].object.key == "a.png"
    row, outputs = await read_with_the_orm(db, workflow_id)  # through Core's type processors
    assert row["started_at"].replace(tzinfo=UTC) == STARTED
    assert (row["status"], row["runner_id"], row["queue_number"], row["last_seq"]) == ("running", "runner-1", 7, 3)
    assert row["cancel_requested"] is True
    read, read_outputs = await store.get(workflow_id)  # through the driver's cursor
    assert read.model_dump() == row
    assert {k: type(v) for k, v in read.model_dump().items()} == {k: type(v) for k, v in row.items()}
    assert [o.model_dump() for o in read_outputs] == outputs


async def test_a_driver_error_in_the_writes_of_a_change_fails_that_change_alone(db: Database) -> None:
    store = WorkflowStore(db)
    user = (await IdentityStore(db).create_user("dev")).id
    ids = [(await store.create(new_row(user))).row.id for _ in range(3)]
    stray = store_output("no-such-workflow", "x.png")  # its insert breaks the outputs' foreign key
    batches = db.batches

    answers = await asyncio.gather(
        store.change_later(ids[0], add_log("one")),
        store.change_later(ids[1], add_log("two"), new_outputs=[stray]),
        store.change_later(ids[2], add_log("three")),
        return_exceptions=True)

    assert db.batches == batches + 1  # one transaction, rolled back, then each change alone
    assert isinstance(answers[1], IntegrityError)
    assert [a.events[0].seq for a in (answers[0], answers[2])] == [2, 2]  # type: ignore[union-attr]
    assert (await store.get(ids[1]))[0].last_seq == 1  # nothing of the failed change
    assert [(await store.get(i))[0].last_seq for i in (ids[0], ids[2])] == [2, 2]


async def test_a_statement_that_leaves_a_column_default_to_the_execution_is_refused(db: Database) -> None:
    events = EventRow.__table__  # type: ignore[attr-defined]
    partial = DriverStatement(lambda: insert(events).values(workflow_id=bindparam("w"), seq=bindparam("s")))
    with pytest.raises(ValueError, match="bind every column"):
        await db.transaction(lambda conn: partial.execute(conn, {"w": str(uuid.uuid4()), "s": 1}))
