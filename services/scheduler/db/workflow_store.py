"""Workflows, their event logs and outputs.

Every change goes through `change`: under the write lock and in one transaction it loads the
row, lets the caller mutate it and name the events that describe the change, numbers the
events (seq = last_seq + 1, ...) and commits row and events together. Nothing is published
before the commit, so a watcher never sees an event that could be lost.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC

from comfyfleet.scheduler.v1 import workflow_pb2
from sqlalchemy import Table, column, delete, func, insert, table, update
from sqlalchemy import select as core_select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from services.scheduler.core.state import TERMINAL, Status
from services.scheduler.db.engine import Database, runs_to_completion
from services.scheduler.db.models import EventRow, IdempotencyRow, OutputRow, WorkflowRow
from services.scheduler.errors import WorkflowExists, WorkflowNotFinished, WorkflowNotFound
from services.scheduler.idempotency import TTL, Claim, KeyReused
from services.scheduler.records import utcnow, workflow_pb

_OPEN = [s.value for s in Status if s not in TERMINAL]
# Rows per user, kept by triggers (db/engine.py, migration 7).
_COUNTS = table("workflow_counts", column("user_id"), column("total"))
# The tables, for the Core statements of the hot paths (create, change).
_WORKFLOWS: Table = WorkflowRow.__table__  # type: ignore[attr-defined]
_EVENTS: Table = EventRow.__table__  # type: ignore[attr-defined]
_OUTPUTS: Table = OutputRow.__table__  # type: ignore[attr-defined]
_IDEMPOTENCY: Table = IdempotencyRow.__table__  # type: ignore[attr-defined]
_WORKFLOW_COLUMNS = [c.name for c in _WORKFLOWS.columns]
_OUTPUT_COLUMNS = [c.name for c in _OUTPUTS.columns]


@dataclass
class Change:
    """What a mutation produced: the row after it, and the committed events."""

    row: WorkflowRow
    events: list[workflow_pb2.WorkflowEvent]
    # Set (and nothing written) when an Idempotency-Key replays an earlier create: its answer.
    replayed: workflow_pb2.Workflow | None = None


# A mutation gets the row and the outputs stored so far, changes the row in place and returns
# the events to append (without seq/time, filled in here). Raising aborts the transaction.
Mutation = Callable[[WorkflowRow, list[OutputRow]], Sequence[workflow_pb2.WorkflowEvent]]


class WorkflowStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    @runs_to_completion
    async def create(self, row: WorkflowRow, claim: Claim | None = None) -> Change:
        """Inserts a new workflow with its first event (status accepted), and records the
        Idempotency-Key claim with the answer; or replays the answer of an earlier claim.

        Core statements in one `Database.transaction`: no unit of work, no read of the id
        first (a taken id shows up as the insert's IntegrityError)."""
        row.last_seq = 1
        event = workflow_pb2.WorkflowEvent(
            workflow_id=row.id, seq=1, status=workflow_pb2.StatusEvent(workflow=workflow_pb(row))
        )
        event.time.FromDatetime(row.created_at.replace(tzinfo=UTC))

        def write(conn: Connection) -> workflow_pb2.Workflow | None:
            if claim is not None:
                if (replayed := _claimed(conn, row.user_id, claim)) is not None:
                    return replayed
                conn.execute(insert(_IDEMPOTENCY), {
                    "user_id": row.user_id, "key": claim.key, "fingerprint": claim.fingerprint,
                    "workflow_id": row.id, "response": event.status.workflow.SerializeToString(),
                    "created_at": row.created_at})
            conn.execute(insert(_WORKFLOWS), {c: getattr(row, c) for c in _WORKFLOW_COLUMNS})
            conn.execute(insert(_EVENTS), {"workflow_id": row.id, "seq": 1, "payload": event.SerializeToString(),
                                           "created_at": row.created_at})
            return None

        try:
            async with self.db.write_lock:
                replayed = await self.db.transaction(write)
        except IntegrityError:
            async with self.db.engine.connect() as conn:
                if (await conn.execute(core_select(_WORKFLOWS.c.id).where(_WORKFLOWS.c.id == row.id))).first():
                    raise WorkflowExists(row.id) from None
            raise
        if replayed is not None:
            return Change(row, [], replayed)
        return Change(row, [event])

    @runs_to_completion
    async def replay(self, user_id: str, claim: Claim) -> workflow_pb2.Workflow | None:
        """The first answer to this claim's key, if it is fresh and the request the same."""
        async with self.db.engine.connect() as conn:
            return await conn.run_sync(lambda c: _claimed(c, user_id, claim, delete_expired=False))

    @runs_to_completion
    async def change(self, workflow_id: str, mutate: Mutation, *, new_outputs: Sequence[OutputRow] = (),
                     drop_outputs: bool = False) -> Change:
        """`drop_outputs`: the outputs recorded so far are deleted in the same transaction (an
        abandoned attempt's, when its workflow is requeued); the mutation sees none.

        Core statements in one `Database.transaction` (so `mutate` runs off the event loop, and
        must only change the row): read the row and its outputs, write back only the columns
        the mutation changed, insert the events and new outputs."""

        def write(conn: Connection) -> Change:
            # FOR UPDATE (Postgres): concurrent changes of one workflow take turns, so seq stays gapless.
            found = conn.execute(
                core_select(_WORKFLOWS).where(_WORKFLOWS.c.id == workflow_id).with_for_update()).first()
            if found is None:
                raise WorkflowNotFound(workflow_id)
            before = found._asdict()
            row = WorkflowRow(**before)
            if drop_outputs:
                conn.execute(delete(_OUTPUTS).where(_OUTPUTS.c.workflow_id == workflow_id))
                outputs: list[OutputRow] = []
            else:
                outputs = [OutputRow(**o._asdict()) for o in conn.execute(
                    core_select(_OUTPUTS).where(_OUTPUTS.c.workflow_id == workflow_id)).all()]
            outputs += new_outputs
            events = list(mutate(row, outputs))
            now = utcnow()
            row.updated_at = now
            for e in events:
                row.last_seq += 1
                e.workflow_id = row.id
                e.seq = row.last_seq
                e.time.FromDatetime(now.replace(tzinfo=UTC))
                if e.WhichOneof("kind") == "status":
                    e.status.workflow.CopyFrom(workflow_pb(row, outputs))
            if new_outputs:
                conn.execute(insert(_OUTPUTS), [{c: getattr(o, c) for c in _OUTPUT_COLUMNS} for o in new_outputs])
            if events:
                conn.execute(insert(_EVENTS), [{"workflow_id": row.id, "seq": e.seq, "payload": e.SerializeToString(),
                                                "created_at": now} for e in events])
            changed = {c: value for c in _WORKFLOW_COLUMNS if (value := getattr(row, c)) != before[c]}
            conn.execute(update(_WORKFLOWS).where(_WORKFLOWS.c.id == workflow_id).values(changed))
            return Change(row, events)

        async with self.db.write_lock:
            return await self.db.transaction(write)

    @runs_to_completion
    async def delete(self, workflow_id: str, user_id: str) -> None:
        """Removes a finished workflow with its events and outputs, in one transaction."""
        async with self.db.write_lock, self.db.sessions() as s, s.begin():
            row = await s.get(WorkflowRow, workflow_id, with_for_update=True)
            if row is None or row.user_id != user_id:
                raise WorkflowNotFound(workflow_id)
            if not Status(row.status).terminal:
                raise WorkflowNotFinished(workflow_id, row.status)
            await s.exec(delete(EventRow).where(col(EventRow.workflow_id) == workflow_id))  # type: ignore[call-overload]
            await s.exec(delete(OutputRow).where(col(OutputRow.workflow_id) == workflow_id))  # type: ignore[call-overload]
            await s.delete(row)

    @runs_to_completion
    async def get(self, workflow_id: str, user_id: str | None = None) -> tuple[WorkflowRow, list[OutputRow]]:
        """The row and its outputs: two Core reads in one `Database.transaction` (one hop on SQLite)."""

        def read(conn: Connection) -> tuple[WorkflowRow, list[OutputRow]]:
            found = conn.execute(core_select(_WORKFLOWS).where(_WORKFLOWS.c.id == workflow_id)).first()
            if found is None or (user_id is not None and found.user_id != user_id):
                raise WorkflowNotFound(workflow_id)
            outputs = conn.execute(core_select(_OUTPUTS).where(_OUTPUTS.c.workflow_id == workflow_id)).all()
            return WorkflowRow(**found._asdict()), [OutputRow(**o._asdict()) for o in outputs]

        return await self.db.transaction(read)

    @runs_to_completion
    async def list_page(
        self, user_id: str, *, page: int, per_page: int, status: str | None, tag: str | None
    ) -> tuple[list[WorkflowRow], int]:
        """Newest first. The total without filters is the user's stored count (no scan); with a
        status it counts the index (user_id, status); a tag filter reads the user's rows."""
        where = [col(WorkflowRow.user_id) == user_id]
        if status:
            where.append(col(WorkflowRow.status) == status)
        if tag:
            where.append(col(WorkflowRow.tags_json).contains(json.dumps(tag)))
        newest_first = (col(WorkflowRow.created_at).desc(), col(WorkflowRow.id).desc())
        # The page's ids come from the index (user_id, created_at, id) alone, so a deep OFFSET
        # walks index entries, not rows; then only those rows are read.
        page_ids = (select(WorkflowRow.id).where(*where).order_by(*newest_first)
                    .offset((page - 1) * per_page).limit(per_page))
        async with self.db.sessions() as s:
            if status or tag:
                total = (await s.exec(select(func.count()).select_from(WorkflowRow).where(*where))).one()
            else:
                total = (await s.exec(select(_COUNTS.c.total).where(_COUNTS.c.user_id == user_id))).first() or 0
            rows = await s.exec(select(WorkflowRow).where(col(WorkflowRow.id).in_(page_ids)).order_by(*newest_first))
            return list(rows.all()), int(total)

    @runs_to_completion
    async def count_open(self, user_id: str) -> int:
        """The user's workflows that have not finished (a seek per open status in (user_id, status));
        on every create, so in one `Database.transaction` (one thread hop on SQLite)."""
        query = core_select(func.count()).select_from(_WORKFLOWS).where(
            _WORKFLOWS.c.user_id == user_id, _WORKFLOWS.c.status.in_(_OPEN))
        return int(await self.db.transaction(lambda conn: conn.execute(query).scalar_one()))

    @runs_to_completion
    async def events_after(
        self, workflow_id: str, after_seq: int, limit: int = 500
    ) -> list[workflow_pb2.WorkflowEvent]:
        async with self.db.sessions() as s:
            rows = await s.exec(
                select(EventRow)
                .where(EventRow.workflow_id == workflow_id, EventRow.seq > after_seq)
                .order_by(col(EventRow.seq))
                .limit(limit)
            )
            return [workflow_pb2.WorkflowEvent.FromString(r.payload) for r in rows.all()]

    @runs_to_completion
    async def pending(self, limit: int) -> list[WorkflowRow]:
        """Accepted and not bound to a runner: high priority first, then oldest."""
        async with self.db.sessions() as s:
            rows = await s.exec(
                select(WorkflowRow)
                .where(WorkflowRow.status == Status.ACCEPTED.value, col(WorkflowRow.runner_id).is_(None))
                .order_by(col(WorkflowRow.priority).desc(), col(WorkflowRow.created_at), col(WorkflowRow.id))
                .limit(limit)
            )
            return list(rows.all())

    @runs_to_completion
    async def open_on_runners(self) -> dict[str, list[WorkflowRow]]:
        """Unfinished workflows bound to a runner, by runner id."""
        async with self.db.sessions() as s:
            rows = await s.exec(
                select(WorkflowRow).where(col(WorkflowRow.status).in_(_OPEN), col(WorkflowRow.runner_id).is_not(None))
            )
            by_runner: dict[str, list[WorkflowRow]] = {}
            for row in rows.all():
                by_runner.setdefault(row.runner_id or "", []).append(row)
            return by_runner


def _claimed(conn: Connection, user_id: str, claim: Claim, *, delete_expired: bool = True
             ) -> workflow_pb2.Workflow | None:
    """The answer stored for (user, key) within its TTL; KeyReused if it was for another request."""
    where = (_IDEMPOTENCY.c.user_id == user_id, _IDEMPOTENCY.c.key == claim.key)
    found = conn.execute(core_select(_IDEMPOTENCY).where(*where)).first()
    if found is None:
        return None
    created = found.created_at if found.created_at.tzinfo else found.created_at.replace(tzinfo=UTC)
    if created <= utcnow() - TTL:
        if delete_expired:
            conn.execute(delete(_IDEMPOTENCY).where(*where))
        return None
    if found.fingerprint != claim.fingerprint:
        raise KeyReused()
    return workflow_pb2.Workflow.FromString(found.response)
