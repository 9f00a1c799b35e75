"""Workflow changes applied together: the set-based half of the group commit.

`WorkflowStore.change_later` queues a `ChangeRequest` (`Database.submit`). Requests that end
up next to each other in one group-commit transaction are applied by `apply_changes` in a
fixed number of statements, whatever their number: one read of the rows (FOR UPDATE) and one
of their outputs, then the mutations in queue order in Python (a later change of a workflow
sees the earlier ones), then one delete of dropped outputs, one insert of new outputs, the
per-user event numbers (`number_events_by_user`), one insert of the events and one update per
set of changed columns. A mutation that raises gets its own exception and leaves no trace: it
ran on a copy of the row, and nothing is written before every mutation has run.

The statements run on the driver's cursor (db/driver_statements.py): through
`Connection.execute` SQLAlchemy's own work per statement cost several times SQLite's, and a
change was ~0.9 ms of CPU; rows become WorkflowRow/OutputRow without pydantic's validation
(`workflow_row`). `WorkflowStore.get` makes the same two reads, without the lock.

On Postgres the batch takes its workflow row locks in one statement, then the event-number
rows in user order, as `event_numbers` asks; the scheduler runs one group commit at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from comfyfleet.scheduler.v1 import workflow_pb2
from sqlalchemy import Select, Table, bindparam, delete, insert, update
from sqlalchemy import select as core_select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm.instrumentation import manager_of_class
from sqlmodel import SQLModel

from services.scheduler.db.driver_statements import DriverStatement, in_list, listed
from services.scheduler.db.event_numbers import INSERT_EVENTS, event_row, number_events_by_user
from services.scheduler.db.models import OutputRow, WorkflowRow
from services.scheduler.errors import WorkflowNotFound
from services.scheduler.records import set_time, utcnow, workflow_pb

_WORKFLOWS: Table = WorkflowRow.__table__  # type: ignore[attr-defined]
_OUTPUTS: Table = OutputRow.__table__  # type: ignore[attr-defined]
_WORKFLOW_COLUMNS = [c.name for c in _WORKFLOWS.columns]
_OUTPUT_COLUMNS = [c.name for c in _OUTPUTS.columns]
Model = TypeVar("Model", bound=SQLModel)


def _rows(n: int, locked: bool) -> Select[Any]:
    query = core_select(_WORKFLOWS).where(_WORKFLOWS.c.id.in_(in_list(_WORKFLOWS.c.id, n)))
    return query.with_for_update() if locked else query


# Run on the driver's cursor (db/driver_statements.py), compiled once per dialect and shape:
# the number of ids read (and whether their rows are locked), the set of columns updated.
_ROWS = DriverStatement(_rows)
_OUTPUTS_OF = DriverStatement(lambda n: core_select(_OUTPUTS).where(
    _OUTPUTS.c.workflow_id.in_(in_list(_OUTPUTS.c.workflow_id, n))))
_DROP_OUTPUTS = DriverStatement(lambda n: delete(_OUTPUTS).where(
    _OUTPUTS.c.workflow_id.in_(in_list(_OUTPUTS.c.workflow_id, n))))
_INSERT_OUTPUTS = DriverStatement(lambda: insert(_OUTPUTS))
_UPDATE = DriverStatement(lambda columns: update(_WORKFLOWS).where(_WORKFLOWS.c.id == bindparam("changed_id"))
                          .values({c: bindparam(c) for c in columns}))


def _detached(model: type[Model]) -> Callable[[dict[str, Any]], Model]:
    new_instance = manager_of_class(model).new_instance

    def detached(values: dict[str, Any]) -> Model:
        row: Model = new_instance()
        row.__dict__.update(values)
        object.__setattr__(row, "__pydantic_fields_set__", set(values))
        object.__setattr__(row, "__pydantic_extra__", None)
        object.__setattr__(row, "__pydantic_private__", None)
        return row

    return detached


_NEW_WORKFLOW_ROW = _detached(WorkflowRow)
_NEW_OUTPUT_ROW = _detached(OutputRow)


def workflow_row(values: dict[str, Any]) -> WorkflowRow:
    """A detached WorkflowRow holding `values` (every column), as `WorkflowRow(**values)` but
    without its validation and per-attribute instrumentation: ~30x cheaper, and made once per
    change. Setting an attribute afterwards works as on any row."""
    return _NEW_WORKFLOW_ROW(values)


# The columns a new workflow may leave out, with the model's defaults.
_WORKFLOW_DEFAULTS = {name: field.default for name, field in WorkflowRow.model_fields.items()
                      if not field.is_required()}
_WORKFLOW_REQUIRED = frozenset(_WORKFLOW_COLUMNS) - set(_WORKFLOW_DEFAULTS)


def new_workflow_row(**values: Any) -> WorkflowRow:
    """`WorkflowRow(**values)` for a new workflow (the model's defaults fill the columns left
    out) made as `workflow_row` makes it: ~165 us less per create."""
    if missing := _WORKFLOW_REQUIRED - values.keys():
        raise TypeError(f"a new workflow row needs {sorted(missing)}")
    if unknown := values.keys() - _WORKFLOW_COLUMNS:
        raise TypeError(f"WorkflowRow has no {sorted(unknown)}")
    return workflow_row({**_WORKFLOW_DEFAULTS, **values})


def output_row(values: dict[str, Any]) -> OutputRow:
    """`workflow_row` for an OutputRow."""
    return _NEW_OUTPUT_ROW(values)


def stored_outputs(conn: Connection, workflow_ids: Sequence[str]) -> dict[str, list[OutputRow]]:
    """The outputs recorded for `workflow_ids`, by workflow."""
    stored: dict[str, list[OutputRow]] = {}
    for values in _OUTPUTS_OF.rows(conn, *listed(_OUTPUTS.c.workflow_id, workflow_ids)):
        stored.setdefault(values["workflow_id"], []).append(output_row(values))
    return stored


def read_rows(conn: Connection, workflow_ids: Sequence[str], *, locked: bool) -> dict[str, dict[str, Any]]:
    """The rows of `workflow_ids` as {column: value} by id; `locked`: FOR UPDATE (on Postgres)."""
    found = _ROWS.rows(conn, *listed(_WORKFLOWS.c.id, workflow_ids), locked)
    return {values["id"]: values for values in found}


@dataclass
class Change:
    """What a mutation produced: the row after it, and the committed events."""

    row: WorkflowRow
    events: list[workflow_pb2.WorkflowEvent]
    # Set (and nothing written) when an Idempotency-Key replays an earlier create: its answer.
    replayed: workflow_pb2.Workflow | None = None


# A mutation gets the row and the outputs stored so far, changes the row in place and returns
# the events to append (without seq/time, filled in here). Raising aborts the change.
Mutation = Callable[[WorkflowRow, list[OutputRow]], Sequence[workflow_pb2.WorkflowEvent]]


@dataclass
class ChangeRequest:
    """One queued change; a work of `Database.submit` that runs together with its neighbours."""

    workflow_id: str
    mutate: Mutation
    new_outputs: Sequence[OutputRow] = ()
    drop_outputs: bool = False

    def __call__(self, conn: Connection) -> Change:
        """Alone, in a transaction of its own."""
        ok, value = apply_changes(conn, [self])[0]
        if not ok:
            raise value
        return value  # type: ignore[no-any-return]

    @staticmethod
    def run_together(conn: Connection, requests: Sequence[Any]) -> list[tuple[bool, Any]]:
        return apply_changes(conn, requests)


def apply_changes(conn: Connection, requests: Sequence[ChangeRequest]) -> list[tuple[bool, Any]]:
    """Applies `requests` in order on `conn`: per request (True, Change) or (False, its exception)."""
    ids = sorted({r.workflow_id for r in requests})
    current = read_rows(conn, ids, locked=True)
    before = {workflow_id: dict(values) for workflow_id, values in current.items()}
    stored = stored_outputs(conn, ids)
    dropped: set[str] = set()
    new_outputs: list[OutputRow] = []
    events_by_user: dict[str, list[workflow_pb2.WorkflowEvent]] = {}
    event_rows: list[tuple[workflow_pb2.WorkflowEvent, Any]] = []
    outcomes: list[tuple[bool, Any]] = []
    for request in requests:
        workflow_id = request.workflow_id
        values = current.get(workflow_id)
        if values is None:
            outcomes.append((False, WorkflowNotFound(workflow_id)))
            continue
        row = workflow_row(values)
        outputs = ([] if request.drop_outputs else list(stored.get(workflow_id, []))) + list(request.new_outputs)
        try:
            events = list(request.mutate(row, outputs))
        except DBAPIError:
            raise
        except Exception as err:
            outcomes.append((False, err))
            continue
        now = utcnow()
        row.updated_at = now
        for e in events:
            row.last_seq += 1
            e.workflow_id = row.id
            e.seq = row.last_seq
            set_time(e.time, now)
            if e.WhichOneof("kind") == "status":
                e.status.workflow.CopyFrom(workflow_pb(row, outputs, graph=False))
        if request.drop_outputs:  # deletes what was stored, and what this batch added before
            dropped.add(workflow_id)
            new_outputs = [o for o in new_outputs if o.workflow_id != workflow_id]
            stored[workflow_id] = []
        new_outputs += request.new_outputs
        stored.setdefault(workflow_id, []).extend(request.new_outputs)
        after = vars(row)  # (an attribute set on a row lands in its __dict__)
        current[workflow_id] = {c: after[c] for c in _WORKFLOW_COLUMNS}
        events_by_user.setdefault(row.user_id, []).extend(events)
        event_rows += [(e, now) for e in events]
        outcomes.append((True, Change(row, events)))

    if dropped:
        _DROP_OUTPUTS.execute(conn, *listed(_OUTPUTS.c.workflow_id, sorted(dropped)))
    if new_outputs:
        _INSERT_OUTPUTS.execute_many(conn, [{c: getattr(o, c) for c in _OUTPUT_COLUMNS} for o in new_outputs])
    if event_rows:
        number_events_by_user(conn, events_by_user)
        INSERT_EVENTS.execute_many(conn, [event_row(e, at) for e, at in event_rows])
    updates: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for workflow_id, values in current.items():
        changed = {c: value for c, value in values.items() if value != before[workflow_id][c]}
        if changed:
            updates.setdefault(tuple(sorted(changed)), []).append({**changed, "changed_id": workflow_id})
    for columns, params in updates.items():
        _UPDATE.execute_many(conn, params, columns)
    return outcomes
