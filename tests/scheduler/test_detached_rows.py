"""The cheap row constructors of db/changes.py (`workflow_row`, `new_workflow_row`) make the same
rows as the model's own constructor, refuse what the constructor would not store, and the rows
they make are written and read back like any other; such a row is set plainly, one a session
loaded through the ORM. records.set_time is Timestamp.FromDatetime."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import inspect

from services.scheduler.db.changes import new_workflow_row, workflow_row
from services.scheduler.db.engine import Database
from services.scheduler.db.identity_store import IdentityStore
from services.scheduler.db.models import WorkflowRow
from services.scheduler.db.workflow_store import WorkflowStore
from services.scheduler.records import set_time, utcnow

COLUMNS = [c.name for c in WorkflowRow.__table__.columns]  # type: ignore[attr-defined]


def values(**extra: Any) -> dict[str, Any]:
    now = utcnow()
    return {"id": str(uuid.uuid4()), "user_id": "u", "name": "w", "status": "accepted",
            "workflow_json": '{"1": {}}', "created_at": now, "updated_at": now, **extra}


@pytest.mark.parametrize("extra", [{}, {"tags_json": '["gpu"]', "priority": 3, "inputs_json": '[{"field": "a"}]'}])
def test_new_workflow_row_is_the_models_row(extra: dict[str, Any]) -> None:
    given = values(**extra)
    made, expected = new_workflow_row(**given), WorkflowRow(**given)
    assert {c: getattr(made, c) for c in COLUMNS} == {c: getattr(expected, c) for c in COLUMNS}
    assert made.model_dump() == expected.model_dump()


def test_new_workflow_row_refuses_missing_and_unknown_columns() -> None:
    given = values()
    del given["workflow_json"]
    with pytest.raises(TypeError, match="workflow_json"):
        new_workflow_row(**given)
    with pytest.raises(TypeError, match="colour"):
        new_workflow_row(**values(colour="red"))


def test_a_detached_row_can_be_changed_like_any_row() -> None:
    row = workflow_row({c: getattr(WorkflowRow(**values()), c) for c in COLUMNS})
    row.status = "queued"
    row.last_seq = 7
    assert (row.status, row.last_seq) == ("queued", 7)
    assert row.model_dump()["last_seq"] == 7


async def test_a_new_row_is_stored_and_read_back(db: Database) -> None:
    user = (await IdentityStore(db).create_user("dev")).id
    store = WorkflowStore(db)
    row = new_workflow_row(**values(user_id=user, tags_json='["gpu"]', priority=1))
    await store.create(row)
    stored, _ = await store.get(row.id, user)
    assert {c: getattr(stored, c) for c in COLUMNS if c not in ("created_at", "updated_at")} == \
        {c: getattr(row, c) for c in COLUMNS if c not in ("created_at", "updated_at")}


def test_a_detached_row_is_set_plainly_and_a_loaded_one_through_the_orm() -> None:
    row = workflow_row({c: getattr(WorkflowRow(**values()), c) for c in COLUMNS})
    row.status = "running"
    assert row.__dict__["status"] == "running"
    assert not inspect(row).attrs.status.history.has_changes()  # no tracking: no session will flush it

    loaded = WorkflowRow(**values())
    state = inspect(loaded)
    state.key = (WorkflowRow, (loaded.id,), None)  # as a session's load leaves it
    loaded.status = "running"
    assert state.attrs.status.history.added == ["running"]  # tracked, for the session to write


async def test_a_row_a_session_loaded_still_writes_its_changes(db: Database) -> None:
    user = (await IdentityStore(db).create_user("dev")).id
    row = new_workflow_row(**values(user_id=user))
    await WorkflowStore(db).create(row)
    async with db.sessions() as s, s.begin():
        loaded = await s.get(WorkflowRow, row.id)
        assert loaded is not None
        loaded.name = "renamed"
    async with db.sessions() as s:
        again = await s.get(WorkflowRow, row.id)
        assert again is not None and again.name == "renamed"


@pytest.mark.parametrize("value", [
    datetime(2026, 11, 29, 8, 30, 1, 123456), datetime(2026, 11, 29, 8, 30, 1, 123456, tzinfo=UTC),
    datetime(2026, 11, 29, 9, 30, 1, 5, tzinfo=timezone(timedelta(hours=1))), datetime(1969, 12, 31, 23, 59, 59, 1),
    datetime(1970, 1, 1), utcnow()])
def test_set_time_is_from_datetime(value: datetime) -> None:
    expected, got = Timestamp(), Timestamp()
    expected.FromDatetime(value.replace(tzinfo=UTC) if value.tzinfo is None else value)
    set_time(got, value)
    assert (got.seconds, got.nanos) == (expected.seconds, expected.nanos)
