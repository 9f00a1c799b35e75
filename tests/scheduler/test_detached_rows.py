"""The cheap row constructors of db/changes.py (`workflow_row`, `new_workflow_row`) make the same
rows as the model's own constructor, refuse what the constructor would not store, and the rows
they make are written and read back like any other."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from services.scheduler.db.changes import new_workflow_row, workflow_row
from services.scheduler.db.engine import Database
from services.scheduler.db.identity_store import IdentityStore
from services.scheduler.db.models import WorkflowRow
from services.scheduler.db.workflow_store import WorkflowStore
from services.scheduler.records import utcnow

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
