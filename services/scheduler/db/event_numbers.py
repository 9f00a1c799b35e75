"""Per-user event numbers: every event of a user's workflows gets `user_seq`, 1, 2, 3, ... in
commit order, the cursor of the fleet-wide stream (GET /v1/events, `Last-Event-ID`).

`number_events` is called inside the write transaction that inserts the events (every insert
path of workflow_events calls it, batched ones included). It bumps the user's row of
`event_numbers` (migration 8) and takes the numbers it returns, so:
- numbers are given out without gaps and never reused: a rolled-back transaction rolls its
  bump back too, and deleting a workflow does not lower the counter (across restarts and
  failover); the deleted workflow's events leave holes in the stored log, which readers skip;
- on Postgres the bump locks the user's row until commit, so one user's writes commit in the
  order of their numbers (a reader that sees n has seen every number below n); on SQLite
  writes are serialised anyway.

A transaction that numbers events of several users must call this once per user in sorted
user order (`number_events_by_user` does), after taking its workflow row locks, so two such
transactions cannot wait on each other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from comfyfleet.scheduler.v1 import workflow_pb2
from sqlalchemy import Table, insert, select, text
from sqlalchemy.engine import Connection

from services.scheduler.db.driver_statements import DriverStatement
from services.scheduler.db.engine import Database, runs_to_completion
from services.scheduler.db.models import EventRow

_EVENTS: Table = EventRow.__table__  # type: ignore[attr-defined]

# On the driver's cursor (db/driver_statements.py): it runs once per user in every write
# transaction that inserts events.
_BUMP = DriverStatement(lambda: text(
    "INSERT INTO event_numbers (user_id, last_user_seq) VALUES (:user_id, :n) "
    "ON CONFLICT (user_id) DO UPDATE SET last_user_seq = event_numbers.last_user_seq + :n "
    "RETURNING last_user_seq"))
_LAST = text("SELECT last_user_seq FROM event_numbers WHERE user_id = :user_id")


def number_events(conn: Connection, user_id: str, events: Sequence[workflow_pb2.WorkflowEvent]) -> None:
    """Sets `user_id` and `user_seq` of `events` (about to be inserted on `conn`, in this order)."""
    if not events:
        return
    last = int(_BUMP.scalar(conn, {"user_id": user_id, "n": len(events)}))
    for offset, event in enumerate(events, start=last - len(events) + 1):
        event.user_id = user_id
        event.user_seq = offset


def number_events_by_user(conn: Connection,
                          events: Mapping[str, Sequence[workflow_pb2.WorkflowEvent]]) -> None:
    """`number_events` for several users in one transaction, in a fixed (sorted) order."""
    for user_id in sorted(events):
        number_events(conn, user_id, events[user_id])


def last_number(conn: Connection, user_id: str) -> int:
    """The user's last number given out (0 before their first event)."""
    return int(conn.execute(_LAST, {"user_id": user_id}).scalar() or 0)


def event_row(event: workflow_pb2.WorkflowEvent, created_at: object) -> dict[str, object]:
    """The workflow_events row of a numbered event (for INSERT_EVENTS)."""
    return {"workflow_id": event.workflow_id, "seq": event.seq, "payload": event.SerializeToString(),
            "created_at": created_at, "user_id": event.user_id, "user_seq": event.user_seq}


# Inserts `event_row`s (execute_many), on the driver's cursor: every write path of events uses it.
INSERT_EVENTS = DriverStatement(lambda: insert(_EVENTS))


class UserEventLog:
    """Reads of a user's events by number (the fleet-wide watch)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    @runs_to_completion
    async def last_number(self, user_id: str) -> int:
        return await self.db.read(lambda conn: last_number(conn, user_id))

    @runs_to_completion
    async def events_after(self, user_id: str, after: int, limit: int = 500) -> list[workflow_pb2.WorkflowEvent]:
        """The user's stored events numbered after `after`, in order (a seek in (user_id, user_seq))."""
        query = (select(_EVENTS.c.payload, _EVENTS.c.user_seq)
                 .where(_EVENTS.c.user_id == user_id, _EVENTS.c.user_seq > after)
                 .order_by(_EVENTS.c.user_seq).limit(limit))
        rows = await self.db.read(lambda conn: conn.execute(query).all())
        events = []
        for payload, user_seq in rows:
            event = workflow_pb2.WorkflowEvent.FromString(payload)
            event.user_id = user_id  # (rows numbered by migration 8 have them only in their columns)
            event.user_seq = user_seq
            events.append(event)
        return events
