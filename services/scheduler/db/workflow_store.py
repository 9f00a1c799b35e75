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
from sqlalchemy import delete, func
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from services.scheduler.core.state import TERMINAL, Status
from services.scheduler.db.engine import Database, runs_to_completion
from services.scheduler.db.models import EventRow, IdempotencyRow, OutputRow, WorkflowRow
from services.scheduler.errors import WorkflowExists, WorkflowNotFinished, WorkflowNotFound
from services.scheduler.idempotency import TTL, Claim, KeyReused
from services.scheduler.records import utcnow, workflow_pb

_OPEN = [s.value for s in Status if s not in TERMINAL]


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
        Idempotency-Key claim with the answer; or replays the answer of an earlier claim."""
        async with self.db.write_lock, self.db.sessions() as s, s.begin():
            if claim is not None:
                if (replayed := await _claimed(s, row.user_id, claim)) is not None:
                    return Change(row, [], replayed)
                s.add(IdempotencyRow(user_id=row.user_id, key=claim.key, fingerprint=claim.fingerprint,
                                     workflow_id=row.id, response=workflow_pb(row).SerializeToString(),
                                     created_at=row.created_at))
            if await s.get(WorkflowRow, row.id) is not None:
                raise WorkflowExists(row.id)
            row.last_seq = 1
            event = workflow_pb2.WorkflowEvent(
                workflow_id=row.id, seq=1, status=workflow_pb2.StatusEvent(workflow=workflow_pb(row))
            )
            event.time.FromDatetime(row.created_at.replace(tzinfo=UTC))
            s.add(row)
            # The tables have no relationship(), so the unit of work does not order the inserts by
            # foreign key: the workflow must be written before its first event references it.
            await s.flush()
            s.add(EventRow(workflow_id=row.id, seq=1, payload=event.SerializeToString(), created_at=row.created_at))
        return Change(row, [event])

    @runs_to_completion
    async def replay(self, user_id: str, claim: Claim) -> workflow_pb2.Workflow | None:
        """The first answer to this claim's key, if it is fresh and the request the same."""
        async with self.db.sessions() as s:
            return await _claimed(s, user_id, claim, delete_expired=False)

    @runs_to_completion
    async def change(self, workflow_id: str, mutate: Mutation, *, new_outputs: Sequence[OutputRow] = ()) -> Change:
        async with self.db.write_lock, self.db.sessions() as s, s.begin():
            # FOR UPDATE (Postgres): concurrent changes of one workflow take turns, so seq stays gapless.
            row = await s.get(WorkflowRow, workflow_id, with_for_update=True)
            if row is None:
                raise WorkflowNotFound(workflow_id)
            outputs = list((await s.exec(select(OutputRow).where(OutputRow.workflow_id == workflow_id))).all())
            outputs += new_outputs
            events = list(mutate(row, outputs))
            for out in new_outputs:
                s.add(out)
            now = utcnow()
            row.updated_at = now
            for e in events:
                row.last_seq += 1
                e.workflow_id = row.id
                e.seq = row.last_seq
                e.time.FromDatetime(now.replace(tzinfo=UTC))
                if e.WhichOneof("kind") == "status":
                    e.status.workflow.CopyFrom(workflow_pb(row, outputs))
                s.add(EventRow(workflow_id=row.id, seq=e.seq, payload=e.SerializeToString(), created_at=now))
            s.add(row)
        return Change(row, events)

    @runs_to_completion
    async def delete(self, workflow_id: str, user_id: str) -> None:
        """Removes a finished workflow with its events and outputs, in one transaction."""
        async with self.db.write_lock, self.db.sessions() as s, s.begin():
            row = await s.get(WorkflowRow, workflow_id)
            if row is None or row.user_id != user_id:
                raise WorkflowNotFound(workflow_id)
            if not Status(row.status).terminal:
                raise WorkflowNotFinished(workflow_id, row.status)
            await s.exec(delete(EventRow).where(col(EventRow.workflow_id) == workflow_id))  # type: ignore[call-overload]
            await s.exec(delete(OutputRow).where(col(OutputRow.workflow_id) == workflow_id))  # type: ignore[call-overload]
            await s.delete(row)

    @runs_to_completion
    async def get(self, workflow_id: str, user_id: str | None = None) -> tuple[WorkflowRow, list[OutputRow]]:
        async with self.db.sessions() as s:
            row = await s.get(WorkflowRow, workflow_id)
            if row is None or (user_id is not None and row.user_id != user_id):
                raise WorkflowNotFound(workflow_id)
            outputs = (await s.exec(select(OutputRow).where(OutputRow.workflow_id == workflow_id))).all()
            return row, list(outputs)

    @runs_to_completion
    async def list_page(
        self, user_id: str, *, page: int, per_page: int, status: str | None, tag: str | None
    ) -> tuple[list[WorkflowRow], int]:
        query = select(WorkflowRow).where(WorkflowRow.user_id == user_id)
        if status:
            query = query.where(WorkflowRow.status == status)
        if tag:
            query = query.where(col(WorkflowRow.tags_json).contains(json.dumps(tag)))
        async with self.db.sessions() as s:
            total = (await s.exec(select(func.count()).select_from(query.subquery()))).one()
            rows = await s.exec(
                query.order_by(col(WorkflowRow.created_at).desc(), col(WorkflowRow.id).desc())
                .offset((page - 1) * per_page)
                .limit(per_page)
            )
            return list(rows.all()), int(total)

    @runs_to_completion
    async def count_open(self, user_id: str) -> int:
        """The user's workflows that have not finished."""
        query = select(func.count()).select_from(WorkflowRow).where(
            WorkflowRow.user_id == user_id, col(WorkflowRow.status).in_(_OPEN))
        async with self.db.sessions() as s:
            return int((await s.exec(query)).one())

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


async def _claimed(s: AsyncSession, user_id: str, claim: Claim, *, delete_expired: bool = True
                   ) -> workflow_pb2.Workflow | None:
    """The answer stored for (user, key) within its TTL; KeyReused if it was for another request."""
    found = await s.get(IdempotencyRow, (user_id, claim.key))
    if found is None:
        return None
    created = found.created_at if found.created_at.tzinfo else found.created_at.replace(tzinfo=UTC)
    if created <= utcnow() - TTL:
        if delete_expired:
            await s.delete(found)
            await s.flush()
        return None
    if found.fingerprint != claim.fingerprint:
        raise KeyReused()
    return workflow_pb2.Workflow.FromString(found.response)
