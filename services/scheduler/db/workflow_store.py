"""Workflows, their event logs and outputs.

Every change goes through `change`: in one transaction it loads the row, lets the caller
mutate it and name the events that describe the change, numbers the events (seq = last_seq +
1, ...) and commits row and events together. Nothing is published before the commit, so a
watcher never sees an event that could be lost. Changes and creates are group-committed
(`Database.submit`): those queued together share one transaction (db/changes.py,
db/creates.py: every event insert numbers its events per user there), each with its own
answer or error.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

from comfyfleet.scheduler.v1 import workflow_pb2
from sqlalchemy import Table, column, delete, func, table, text
from sqlalchemy import select as core_select
from sqlalchemy.engine import Connection
from sqlmodel import col, select

from services.scheduler.core.state import Status
from services.scheduler.db.changes import Change, ChangeRequest, Mutation, read_rows, stored_outputs, workflow_row
from services.scheduler.db.creates import OPEN, OPEN_COUNTS, CreateRequest, claimed
from services.scheduler.db.driver_statements import DriverStatement
from services.scheduler.db.engine import Database, runs_to_completion
from services.scheduler.db.models import EventRow, OutputRow, WorkflowRow
from services.scheduler.errors import WorkflowNotFinished, WorkflowNotFound
from services.scheduler.idempotency import Claim
from services.scheduler.records import set_time, workflow_pb

_OPEN = OPEN
# Rows per user, kept by triggers (db/engine.py, migration 7).
_COUNTS = table("workflow_counts", column("user_id"), column("total"))
# The table, for the count of open workflows.
_WORKFLOWS: Table = WorkflowRow.__table__  # type: ignore[attr-defined]
_EVENTS: Table = EventRow.__table__  # type: ignore[attr-defined]
# On the driver's cursor (db/driver_statements.py): every watch of a workflow reads its log.
_EVENTS_AFTER = DriverStatement(lambda: text(
    "SELECT payload FROM workflow_events WHERE workflow_id = :workflow_id AND seq > :after_seq "
    "ORDER BY seq LIMIT :limit").columns(_EVENTS.c.payload))


EVENTS_PAGE = 500  # events read at a time by a watch catching up


def _events_after(conn: Connection, workflow_id: str, after_seq: int, limit: int) -> list[workflow_pb2.WorkflowEvent]:
    rows = _EVENTS_AFTER.rows(conn, {"workflow_id": workflow_id, "after_seq": after_seq, "limit": limit})
    return [workflow_pb2.WorkflowEvent.FromString(r["payload"]) for r in rows]


class WorkflowStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(self, row: WorkflowRow, claim: Claim | None = None, *, max_open: int | None = None,
                     then: Mutation | None = None) -> Change:
        """Inserts a new workflow with its first event (status accepted), and records the
        Idempotency-Key claim with the answer; or replays the answer of an earlier claim.
        `max_open`: OpenLimitReached if the user already has that many unfinished workflows
        (counted in the same transaction). `then`: a change of the new row committed with it
        (the assignment of a workflow placed as it is created): it mutates the row after the
        first event is made (the answer and the claim are the row as accepted) and names the
        events that follow it.

        Group commit (`Database.submit`): concurrent creates share one transaction, each with
        its own answer or error (db/creates.py). Answered only after the commit."""
        row.last_seq = 1
        event = workflow_pb2.WorkflowEvent(
            workflow_id=row.id, seq=1, status=workflow_pb2.StatusEvent(workflow=workflow_pb(row, graph=False))
        )
        set_time(event.time, row.created_at)
        more = then(row, []) if then is not None else []
        for e in more:
            row.last_seq += 1
            e.workflow_id = row.id
            e.seq = row.last_seq
            set_time(e.time, row.created_at)

        replayed = await self.db.submit(CreateRequest(row, event, claim, max_open, more))
        if replayed is not None:
            return Change(row, [], replayed)
        return Change(row, [event, *more])

    @runs_to_completion
    async def replay(self, user_id: str, claim: Claim) -> workflow_pb2.Workflow | None:
        """The first answer to this claim's key, if it is fresh and the request the same."""
        async with self.db.engine.connect() as conn:
            return await conn.run_sync(lambda c: claimed(c, user_id, claim, delete_expired=False))

    async def change(self, workflow_id: str, mutate: Mutation, *, new_outputs: Sequence[OutputRow] = (),
                     drop_outputs: bool = False) -> Change:
        """`change_later`, awaited: the change once committed."""
        return await self.change_later(workflow_id, mutate, new_outputs=new_outputs, drop_outputs=drop_outputs)

    def change_later(self, workflow_id: str, mutate: Mutation, *, new_outputs: Sequence[OutputRow] = (),
                     drop_outputs: bool = False) -> asyncio.Future[Change]:
        """Queues the change now (group commit, `Database.submit`: changes queued one after the
        other apply in that order, several in one transaction); the future gets the Change once
        committed, or the mutation's exception. The change is made even if nobody awaits it.

        `drop_outputs`: the outputs recorded so far are deleted in the same transaction (an
        abandoned attempt's, when its workflow is requeued); the mutation sees none.

        `mutate` runs off the event loop, and must only change the row; it may raise, and then
        nothing of this change is written (db/changes.py: how queued changes apply together)."""

        return self.db.submit(ChangeRequest(workflow_id, mutate, new_outputs, drop_outputs))

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
        """The row and its outputs: the group commit's two reads (db/changes.py, without the row
        lock), two index seeks, so `Database.read_short` (on SQLite, on the loop: a hop to the
        reader thread and back costs ~140 us of CPU on a small VM, more than both seeks)."""

        def read(conn: Connection) -> tuple[WorkflowRow, list[OutputRow]]:
            found = read_rows(conn, [workflow_id], locked=False).get(workflow_id)
            if found is None or (user_id is not None and found["user_id"] != user_id):
                raise WorkflowNotFound(workflow_id)
            return workflow_row(found), stored_outputs(conn, [workflow_id]).get(workflow_id, [])

        return await self.db.read_short(read)

    @runs_to_completion
    async def watch_start(
        self, workflow_id: str, user_id: str, after_seq: int | None
    ) -> tuple[WorkflowRow, list[OutputRow], list[workflow_pb2.WorkflowEvent]]:
        """`get`, and with `after_seq` the first page of `events_after` it, in one read (one
        snapshot: the events end at the row's last_seq). Without `after_seq` it is `get`'s two
        seeks, read on the loop (`read_short`); a page of up to EVENTS_PAGE events is read on
        the reader thread."""

        def read(conn: Connection) -> tuple[WorkflowRow, list[OutputRow], list[workflow_pb2.WorkflowEvent]]:
            found = read_rows(conn, [workflow_id], locked=False).get(workflow_id)
            if found is None or found["user_id"] != user_id:
                raise WorkflowNotFound(workflow_id)
            outputs = stored_outputs(conn, [workflow_id]).get(workflow_id, [])
            events = [] if after_seq is None else _events_after(conn, workflow_id, after_seq, EVENTS_PAGE)
            return workflow_row(found), outputs, events

        return await (self.db.read_short if after_seq is None else self.db.read)(read)

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
        oldest_first = (col(WorkflowRow.created_at).asc(), col(WorkflowRow.id).asc())
        offset = (page - 1) * per_page
        async with self.db.sessions() as s:
            if status or tag:
                total = (await s.exec(select(func.count()).select_from(WorkflowRow).where(*where))).one()
            else:
                total = (await s.exec(select(_COUNTS.c.total).where(_COUNTS.c.user_id == user_id))).first() or 0
            total = int(total)
            # The page's ids come from the index (user_id, created_at, id) alone, so an OFFSET
            # walks index entries, not rows; then only those rows are read. A page in the older
            # half is counted from the oldest end: the last page costs what the first does.
            if offset > total // 2:
                older = total - offset - per_page  # rows older than the page
                page_ids = (select(WorkflowRow.id).where(*where).order_by(*oldest_first)
                            .offset(max(0, older)).limit(max(0, per_page + min(0, older))))
            else:
                page_ids = select(WorkflowRow.id).where(*where).order_by(*newest_first).offset(offset).limit(per_page)
            rows = await s.exec(select(WorkflowRow).where(col(WorkflowRow.id).in_(page_ids)).order_by(*newest_first))
            return list(rows.all()), total

    @runs_to_completion
    async def count_open(self, user_id: str) -> int:
        """The user's workflows that have not finished: their row of the counts that triggers
        keep (db/migrations.py, step 10); one `Database.read`. `create` reads it itself."""
        query = core_select(OPEN_COUNTS.c.total).where(OPEN_COUNTS.c.user_id == user_id)
        return int(await self.db.read(lambda conn: conn.execute(query).scalar() or 0))

    @runs_to_completion
    async def events_after(
        self, workflow_id: str, after_seq: int, limit: int = EVENTS_PAGE
    ) -> list[workflow_pb2.WorkflowEvent]:
        """The workflow's stored events after `after_seq`, in order (a seek in its primary key)."""
        return await self.db.read(lambda conn: _events_after(conn, workflow_id, after_seq, limit))

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

