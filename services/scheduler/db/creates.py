"""New workflows created together: the set-based half of the group commit for creates.

`WorkflowStore.create` queues a `CreateRequest` (`Database.submit`); the creates that share a
group-commit transaction are checked and written by `apply_creates` in a fixed number of
statements: one read of the ids already taken, one count of the open workflows per user with
a limit, then each create's checks in queue order in Python (an Idempotency-Key sent twice
in the batch replays the first one's answer, as it would across batches), then one insert of
the workflows, one of the keys, the per-user event numbers and one insert of the first events.
A create that fails a check gets its own exception (WorkflowExists, KeyReused,
OpenLimitReached) and writes nothing; the others are committed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC
from typing import Any

from comfyfleet.scheduler.v1 import workflow_pb2
from sqlalchemy import BigInteger, String, Table, bindparam, column, delete, insert, table
from sqlalchemy import select as core_select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from services.scheduler.core.state import TERMINAL, Status
from services.scheduler.db.driver_statements import DriverStatement, in_list, listed
from services.scheduler.db.event_numbers import INSERT_EVENTS, event_row, number_events_by_user
from services.scheduler.db.models import IdempotencyRow, WorkflowRow
from services.scheduler.errors import WorkflowExists
from services.scheduler.idempotency import TTL, Claim, KeyReused
from services.scheduler.records import utcnow, with_graph

OPEN = [s.value for s in Status if s not in TERMINAL]
_WORKFLOWS: Table = WorkflowRow.__table__  # type: ignore[attr-defined]
_IDEMPOTENCY: Table = IdempotencyRow.__table__  # type: ignore[attr-defined]
_WORKFLOW_COLUMNS = [c.name for c in _WORKFLOWS.columns]

# On the driver's cursor (db/driver_statements.py), compiled once per dialect and IN-list length.
_TAKEN = DriverStatement(lambda n: core_select(_WORKFLOWS.c.id).where(_WORKFLOWS.c.id.in_(in_list(_WORKFLOWS.c.id, n))))
# Each user's row of the counts that triggers keep (migration 10, db/migrations.py).
OPEN_COUNTS = table("open_workflow_counts", column("user_id", String), column("total", BigInteger))
_OPEN_COUNTS = DriverStatement(lambda n: core_select(OPEN_COUNTS.c.user_id, OPEN_COUNTS.c.total).where(
    OPEN_COUNTS.c.user_id.in_(in_list(OPEN_COUNTS.c.user_id, n))))
_CLAIM = DriverStatement(lambda: core_select(_IDEMPOTENCY).where(_IDEMPOTENCY.c.user_id == bindparam("user_id"),
                                                                 _IDEMPOTENCY.c.key == bindparam("key")))
_DROP_CLAIM = DriverStatement(lambda: delete(_IDEMPOTENCY).where(_IDEMPOTENCY.c.user_id == bindparam("user_id"),
                                                                 _IDEMPOTENCY.c.key == bindparam("key")))
_INSERT_WORKFLOWS = DriverStatement(lambda: insert(_WORKFLOWS))
_INSERT_CLAIMS = DriverStatement(lambda: insert(_IDEMPOTENCY))


class OpenLimitReached(Exception):
    """The user has `used` unfinished workflows, the `max_open` a create was given, or more."""

    def __init__(self, used: int) -> None:
        super().__init__(f"{used} unfinished workflows")
        self.used = used


@dataclass
class CreateRequest:
    """One queued create: the row, its first event (seq 1), its key, the user's open limit,
    and the events that follow the first in the same commit (an assignment made with the
    create: Workflows.create). The outcome is None (created) or the replayed answer of an
    earlier create with the key."""

    row: WorkflowRow
    event: workflow_pb2.WorkflowEvent
    claim: Claim | None = None
    max_open: int | None = None
    more: Sequence[workflow_pb2.WorkflowEvent] = ()

    def __call__(self, conn: Connection) -> workflow_pb2.Workflow | None:
        """Alone, in a transaction of its own."""
        ok, value = apply_creates(conn, [self])[0]
        if not ok:
            raise value
        return value  # type: ignore[no-any-return]

    @staticmethod
    def run_together(conn: Connection, requests: Sequence[Any]) -> list[tuple[bool, Any]]:
        return apply_creates(conn, requests)


def apply_creates(conn: Connection, requests: Sequence[CreateRequest]) -> list[tuple[bool, Any]]:
    """Checks and inserts `requests` in order on `conn`: per request (True, None or the replayed
    answer) or (False, its exception)."""
    taken = {found["id"] for found in _TAKEN.rows(conn, *listed(_WORKFLOWS.c.id, sorted({r.row.id for r in requests})))}
    limited = sorted({r.row.user_id for r in requests if r.max_open is not None})
    open_counts: dict[str, int] = {}
    if limited:
        users, n = listed(OPEN_COUNTS.c.user_id, limited)
        open_counts = {found["user_id"]: int(found["total"]) for found in _OPEN_COUNTS.rows(conn, users, n)}
    keys: dict[tuple[str, str], tuple[str, bytes]] = {}  # the keys this batch claims
    rows: list[dict[str, Any]] = []
    claims: list[dict[str, Any]] = []
    events_by_user: dict[str, list[workflow_pb2.WorkflowEvent]] = {}
    outcomes: list[tuple[bool, Any]] = []
    for request in requests:
        row, claim = request.row, request.claim
        try:
            if claim is not None:
                if (mine := keys.get((row.user_id, claim.key))) is not None:
                    if mine[0] != claim.fingerprint:
                        raise KeyReused()
                    outcomes.append((True, workflow_pb2.Workflow.FromString(mine[1])))
                    continue
                # (An expired claim of the key is deleted even if this create then fails: harmless.)
                if (replayed := claimed(conn, row.user_id, claim)) is not None:
                    outcomes.append((True, replayed))
                    continue
            used = open_counts.get(row.user_id, 0)
            if request.max_open is not None and used >= request.max_open:
                raise OpenLimitReached(used)
            if row.id in taken:
                raise WorkflowExists(row.id)
        except DBAPIError:
            raise
        except Exception as err:
            outcomes.append((False, err))
            continue
        taken.add(row.id)
        open_counts[row.user_id] = used + 1
        rows.append({c: getattr(row, c) for c in _WORKFLOW_COLUMNS})
        if claim is not None:
            response = with_graph(request.event.status.workflow, row.workflow_json).SerializeToString()
            keys[(row.user_id, claim.key)] = (claim.fingerprint, response)
            claims.append({"user_id": row.user_id, "key": claim.key, "fingerprint": claim.fingerprint,
                           "workflow_id": row.id, "response": response, "created_at": row.created_at})
        events_by_user.setdefault(row.user_id, []).extend((request.event, *request.more))
        outcomes.append((True, None))
    if rows:
        _INSERT_WORKFLOWS.execute_many(conn, rows)
        if claims:
            _INSERT_CLAIMS.execute_many(conn, claims)
        number_events_by_user(conn, events_by_user)
        INSERT_EVENTS.execute_many(conn, [event_row(e, r.row.created_at) for r, (ok, answer)
                                          in zip(requests, outcomes, strict=True) if ok and answer is None
                                          for e in (r.event, *r.more)])
    return outcomes


def claimed(conn: Connection, user_id: str, claim: Claim, *, delete_expired: bool = True
            ) -> workflow_pb2.Workflow | None:
    """The answer stored for (user, key) within its TTL; KeyReused if it was for another request."""
    where = {"user_id": user_id, "key": claim.key}
    rows = _CLAIM.rows(conn, where)
    if not rows:
        return None
    found = rows[0]
    created = found["created_at"] if found["created_at"].tzinfo else found["created_at"].replace(tzinfo=UTC)
    if created <= utcnow() - TTL:
        if delete_expired:
            _DROP_CLAIM.execute(conn, where)
        return None
    if found["fingerprint"] != claim.fingerprint:
        raise KeyReused()
    return workflow_pb2.Workflow.FromString(found["response"])
