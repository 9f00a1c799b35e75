"""The runner side of a workflow: placement passes, assignments, runner events, requeue.

Reserve, then dispatch, and roll back on failure: a slot is reserved in the fleet before the
assignment is committed and sent; if the workflow changed meanwhile or the session closed,
the reservation is released and the row put back. No lock is held across network I/O.

Which workflows a pass considers comes from `PendingQueue` (bounded, fair across users);
their order of service and the runner each gets come from the pure core (`core.placement`),
given when each user was last served, so that passes freeing one slot at a time still take
turns between users. A create that finds nothing waiting and a slot free needs no pass: its
own transaction makes the assignment (`reserve_new`, then `dispatch`). What a runner event
does to a row is in runner_events.py.

`queue_number` is the position in the runner's ComfyUI queue, as API.md defines it: the
runner reports it (`queued` events) and every change is published. A workflow still waiting
in the scheduler has no queue_number (null): its place depends on priorities, other users'
arrivals and which runners free up, so a number would be a guess, and keeping it current
would cost one event per waiting workflow on every placement.

Runner lifecycle for the runner API: `set_runner_enabled` (disabled: nothing new),
`drain_runner` (Drain sent: finishes what it holds, nothing new), `delete_runner` (its
unfinished workflows are cancelled on it and go back to placement, without using up an
attempt; its session is closed).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from comfyfleet.runner.v1 import runner_event_pb2
from comfyfleet.runner.v1 import runner_session_service_pb2 as session_pb2
from comfyfleet.scheduler.v1 import workflow_pb2
from comfyfleet.storage.v1 import object_pb2
from google.protobuf.json_format import ParseDict

from services.scheduler.config import Settings
from services.scheduler.core import placeholders
from services.scheduler.core.graph import parse_graph
from services.scheduler.core.placement import PendingWorkflow, place
from services.scheduler.core.state import Status, transition
from services.scheduler.db.changes import Mutation, output_row
from services.scheduler.db.models import OutputRow, WorkflowRow
from services.scheduler.db.pending_queue import PendingQueue
from services.scheduler.db.workflow_store import Change, WorkflowStore
from services.scheduler.errors import IllegalTransition, WorkflowNotFound
from services.scheduler.fleet import Fleet, Session
from services.scheduler.hub import EventHub
from services.scheduler.records import utcnow
from services.scheduler.runner_events import apply_runner_event
from services.scheduler.workflows import log_event, status_event, stored_fields

log = logging.getLogger(__name__)

PLACEMENT_BATCH = 500
PLACEMENT_MIN = 32  # the smallest batch a pass reads


class _Skip(Exception):
    """Aborts a change that no longer applies (stale, repeated or already finished)."""


@dataclass(frozen=True)
class Reservation:
    """A runner slot held for a workflow being created (`Execution.reserve_new`): `assign` is
    the change its create commits with it, `Execution.dispatch` sends it or gives it back."""

    workflow_id: str
    runner_id: str
    session: Session
    assign: Mutation


class Execution:
    def __init__(
        self,
        settings: Settings,
        store: WorkflowStore,
        hub: EventHub,
        fleet: Fleet,
        *,
        finished: Callable[[WorkflowRow], None],
    ) -> None:
        self.settings = settings
        self.store = store
        self.hub = hub
        self.fleet = fleet
        self.finished = finished
        self.queue = PendingQueue(store.db)
        # Whether a user's tier allows shared (managed) runners; the wiring sets it once tiers
        # say so. Shared runners come from Session.shared (the runner row's `shared` flag).
        self.may_use_shared: Callable[[str], bool] = lambda _user_id: False
        # user id -> when the user was last given a runner (a counter): fairness across passes.
        self._last_served: dict[str, int] = {}
        self._served = 0
        self._wake = asyncio.Event()
        # `kick`s so far, and their count when a pass last left the queue empty: while the two
        # are equal nothing can be waiting, and a freed slot needs no pass (`slot_freed`).
        self._kicks = 0
        self._empty_at_kick = -1

    # -- placement -------------------------------------------------------------------------

    def kick(self) -> None:
        """Something relevant changed (work to place, a runner, a requeue): run a placement
        pass soon (coalesced)."""
        self._kicks += 1
        self._wake.set()

    def slot_freed(self) -> None:
        """A runner slot came free: a pass soon, unless the last one placed everything that
        was waiting and nothing was kicked since (work to place always kicks), so nothing can
        be waiting: one workflow at a time, each completion would otherwise read the queue
        for nothing."""
        if self._empty_at_kick != self._kicks:
            self._wake.set()

    async def run_placement(self) -> None:
        """Placement loop: one pass per wake-up, never on a timer."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.placement_pass()
            except Exception:
                log.exception("placement pass failed")
                await asyncio.sleep(0.5)
                self._wake.set()

    async def placement_pass(self) -> int:
        """Reads a batch sized to the free slots (a pass per completion must not read
        PLACEMENT_BATCH rows to fill one slot), and the full batch only when that one did not
        fill them (tags no free runner has, another user's turn) and held more."""
        kicks = self._kicks
        free = sum(max(0, r.slots - r.in_flight) for r in self.fleet.snapshot() if r.enabled and r.connected)
        if free == 0:
            return 0  # the next release kicks again
        limit = min(PLACEMENT_BATCH, max(PLACEMENT_MIN, 4 * free))
        placed, read = await self._place(limit)
        last_placed = placed
        if placed < free and read >= limit and limit < PLACEMENT_BATCH:
            last_placed, read = await self._place(PLACEMENT_BATCH)
            placed, limit = placed + last_placed, PLACEMENT_BATCH
        if self.queue.read_all and last_placed == read:
            self._empty_at_kick = kicks  # (a kick during the pass makes this stale at once)
        if read >= limit and placed:
            self.kick()  # more may be waiting beyond this batch
        return placed

    async def _place(self, limit: int) -> tuple[int, int]:
        """One placement over a batch of at most `limit` per priority: (placed, read)."""
        waiting = await self.queue.batch(limit)
        pending = [PendingWorkflow(w.id, w.user_id, w.tags, priority=w.priority, arrival=w.created_at.timestamp(),
                                   may_use_shared=self.may_use_shared(w.user_id))
                   for w in waiting]
        decisions = place(pending, self.fleet.snapshot(), self._last_served)
        # All at once: the assignments of a pass are queued together and share one transaction.
        assigned = await asyncio.gather(*(self._assign(workflow_id, runner_id)
                                          for workflow_id, runner_id in decisions.bindings),
                                        return_exceptions=True)
        if failed := [err for err in assigned if isinstance(err, BaseException)]:
            raise failed[0]
        return sum(n for n in assigned if isinstance(n, int)), len(waiting)

    # -- placed as created -----------------------------------------------------------------

    def reserve_new(self, row: WorkflowRow) -> Reservation | None:
        """A runner slot for a workflow about to be created (`row`, accepted), when nothing
        waits (the last pass placed everything it read and nothing was kicked since) and a
        runner can take it now. The create's own transaction then makes the assignment
        (`Reservation.assign`) and `dispatch` sends it: one commit and no queue read, instead
        of a commit, a pass, its read and a second commit. The runner is the one a pass would
        pick for this workflow alone (the same `place`), and with nothing waiting no other
        workflow had a claim to it. None: the create kicks a pass, as always."""
        if self._empty_at_kick != self._kicks:
            return None
        pending = PendingWorkflow(row.id, row.user_id, frozenset(json.loads(row.tags_json)), priority=row.priority,
                                  may_use_shared=self.may_use_shared(row.user_id))
        bindings = place([pending], self.fleet.snapshot(), self._last_served).bindings
        if not bindings or (session := self.fleet.reserve(runner_id := bindings[0][1], row.id, 0)) is None:
            return None
        return Reservation(row.id, runner_id, session, self._assignment(runner_id, session))

    async def dispatch(self, reservation: Reservation, change: Change | None) -> None:
        """After the create of a reserved workflow: sends its assignment (`change`: the create
        committed), or gives the slot back (None: it failed, or replayed an earlier one)."""
        if change is None:
            self.fleet.release(reservation.runner_id, reservation.workflow_id)
            self.slot_freed()
            return
        await self._dispatch(change.row, reservation.session, reservation.runner_id)

    # -- assignments ----------------------------------------------------------------------

    def _assignment(self, runner_id: str, session: Session) -> Mutation:
        """The change that binds an accepted workflow to `runner_id` and fills its prompt."""

        def mutate(r: WorkflowRow, _outputs: list[OutputRow]) -> list[workflow_pb2.WorkflowEvent]:
            # The prompt is filled from the row the change reads: no read of its own first.
            if r.status != Status.ACCEPTED.value or r.runner_id is not None:
                raise _Skip
            graph = parse_graph(r.workflow_json)
            found = placeholders.scan(graph)
            binding = placeholders.bind(found, stored_fields(r))
            prompt, params = placeholders.fill(
                graph, found, binding, random64=lambda: secrets.randbits(64), now_ms=time.time_ns() // 1_000_000
            )
            r.runner_id = runner_id
            r.attempt += 1
            r.prompt_json = json.dumps(prompt)
            r.params_json = json.dumps(params)
            r.prompt_id = ""
            r.queue_number = None
            r.last_runner_seq = 0
            return [log_event(f"assigned to runner {session.name} (attempt {r.attempt})")]

        return mutate

    async def _assign(self, workflow_id: str, runner_id: str) -> int:
        # The slot is taken before the change (so a pass never binds it twice); the attempt
        # number it is held for is set once the change has read the row.
        session = self.fleet.reserve(runner_id, workflow_id, 0)
        if session is None:
            return 0
        try:
            change = await self.store.change(workflow_id, self._assignment(runner_id, session))
        except (_Skip, WorkflowNotFound):
            self.fleet.release(runner_id, workflow_id)
            return 0
        except Exception:
            self.fleet.release(runner_id, workflow_id)
            raise
        self.hub.publish(change.events)
        return await self._dispatch(change.row, session, runner_id)

    async def _dispatch(self, row: WorkflowRow, session: Session, runner_id: str) -> int:
        """Sends the committed assignment of `row` (its events published): 1, or 0 and the
        assignment undone if the session closed meanwhile."""
        session.held[row.id] = row.attempt
        self._served += 1
        self._last_served[row.user_id] = self._served
        assignment = session_pb2.Assignment(
            workflow_id=row.id,
            attempt=row.attempt,
            prompt_json=row.prompt_json,
            output_prefix=f"outputs/{row.id}/",
        )
        for entry in json.loads(row.inputs_json):
            if entry.get("is_file"):
                assignment.inputs.append(session_pb2.InputFile(
                    param=entry["field"][1:],
                    filename=entry.get("filename", ""),
                    object=ParseDict(entry["object"], object_pb2.ObjectRef()),
                ))
        if not session.send(session_pb2.ConnectResponse(assignment=assignment)):
            await self._unassign(row.id, runner_id, "runner went away before the assignment was sent")
            return 0
        return 1

    async def _unassign(self, workflow_id: str, runner_id: str, why: str) -> None:
        self.fleet.release(runner_id, workflow_id)

        def mutate(r: WorkflowRow, _outputs: list[OutputRow]) -> list[workflow_pb2.WorkflowEvent]:
            if r.runner_id != runner_id or r.status != Status.ACCEPTED.value:
                raise _Skip
            r.runner_id = None
            r.attempt -= 1
            return [log_event(why)]

        try:
            self.hub.publish((await self.store.change(workflow_id, mutate)).events)
        except _Skip:
            pass
        self.kick()

    # -- runner events ---------------------------------------------------------------------

    async def on_event(self, session: Session, event: runner_event_pb2.RunnerEvent) -> None:
        """Applies one runner event and publishes what it changed (`event_arrived`, awaited)."""
        if event.WhichOneof("kind") == "handed_back":  # given back unrun (its ComfyUI unreachable)
            if session.held.get(event.workflow_id) == event.attempt:  # placed again, not counted
                await self.requeue(session.runner_id, keep=frozenset(session.held) - {event.workflow_id},
                                   why=f"runner handed it back ({event.handed_back.reason})", counts=False)
            return
        await self.event_arrived(session, event)

    def event_arrived(self, session: Session, event: runner_event_pb2.RunnerEvent) -> asyncio.Future[None]:
        """Queues the change the event makes at once (group commit: a session's events apply in
        the order they arrive, many in one transaction) and returns a future that completes once
        it is committed and published, or skipped (a late runner, a requeued attempt, a repeat by
        runner_seq). Never raises: a change that fails is logged. Not for `handed_back`."""
        kind = event.WhichOneof("kind")
        new_outputs: list[OutputRow] = []
        if kind == "output_stored":
            o = event.output_stored
            new_outputs.append(output_row({  # every column: as OutputRow(...) without its validation
                "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{event.workflow_id}/{event.attempt}/{o.object.key}")),
                "workflow_id": event.workflow_id, "node_id": o.node_id, "filename": o.filename,
                "object_key": o.object.key, "size_bytes": o.object.size_bytes, "sha256": o.object.sha256,
                "content_type": o.object.content_type, "created_at": utcnow(),
            }))

        def mutate(r: WorkflowRow, outputs: list[OutputRow]) -> list[workflow_pb2.WorkflowEvent]:
            if r.runner_id != session.runner_id or r.attempt != event.attempt:
                raise _Skip  # a late runner, or an attempt that was requeued
            if event.runner_seq <= r.last_runner_seq or Status(r.status).terminal:
                raise _Skip  # a repeat after a reconnect, or already finished
            r.last_runner_seq = event.runner_seq
            return apply_runner_event(r, event, outputs)

        queued = self.store.change_later(event.workflow_id, mutate, new_outputs=new_outputs)
        return asyncio.ensure_future(self._event_applied(session, event, queued))

    async def _event_applied(self, session: Session, event: runner_event_pb2.RunnerEvent,
                             queued: asyncio.Future[Change]) -> None:
        try:
            change = await queued
        except _Skip:
            return
        except IllegalTransition as err:
            log.warning("runner %s sent %s for workflow %s: %s", session.name, event.WhichOneof("kind"),
                        event.workflow_id, err)
            return
        except Exception:
            log.exception("event from runner %s could not be applied", session.name)
            return
        self.hub.publish(change.events)
        if Status(change.row.status).terminal:
            self.fleet.release(session.runner_id, event.workflow_id)
            self.finished(change.row)
            self.slot_freed()

    # -- runner loss -----------------------------------------------------------------------

    async def requeue(
        self, runner_id: str, keep: frozenset[str] = frozenset(), why: str = "runner lost", *, counts: bool = True
    ) -> int:
        """Sends the unfinished workflows of a lost runner back to placement, or fails those that
        used up max_attempts with cause `runner lost` (unless the loss does not `count`)."""
        rows = (await self.store.open_on_runners()).get(runner_id, [])
        count = 0
        for row in rows:
            if row.id in keep:
                continue
            self.fleet.release(runner_id, row.id)

            def mutate(r: WorkflowRow, _outputs: list[OutputRow]) -> list[workflow_pb2.WorkflowEvent]:
                status = Status(r.status)
                if r.runner_id != runner_id or status.terminal:
                    raise _Skip
                if r.cancel_requested:
                    r.status = transition(status, Status.CANCELLED).value
                    r.completed_at = utcnow()
                    return [status_event()]
                if counts and r.attempt >= self.settings.max_attempts:
                    r.status = transition(status, Status.FAILED).value
                    r.completed_at = utcnow()
                    r.failure_json = json.dumps({
                        "exception_type": "RunnerLost",
                        "exception_message": f"runner lost ({why}); gave up after {r.attempt} attempts",
                    })
                    return [status_event()]
                if status is not Status.ACCEPTED:
                    r.status = transition(status, Status.ACCEPTED).value
                r.runner_id = None
                r.prompt_id = ""
                r.queue_number = None
                r.started_at = None
                return [log_event(f"{why}; requeued after attempt {r.attempt}", workflow_pb2.LOG_LEVEL_WARNING),
                        status_event()]

            try:
                # What the lost attempt stored is not the workflow's output: the next attempt makes its own.
                change = await self.store.change(row.id, mutate, drop_outputs=True)
            except _Skip:
                continue
            count += 1
            self.hub.publish(change.events)
            if Status(change.row.status).terminal:
                self.finished(change.row)
        self.kick()
        return count

    # -- runner lifecycle (the runner API) ---------------------------------------------------

    def set_runner_enabled(self, runner_id: str, enabled: bool) -> None:
        """A disabled runner keeps what it holds and gets nothing new (the caller stores the
        status; a runner connecting later reads it from its row)."""
        self.fleet.set_enabled(runner_id, enabled)
        if enabled:
            self.kick()

    def drain_runner(self, runner_id: str) -> bool:
        """Sends Drain: the runner finishes what it holds and takes nothing new until it
        reconnects. False if it is not connected."""
        return self.fleet.drain(runner_id)

    async def delete_runner(self, runner_id: str) -> int:
        """Call after the runner's row is deleted: its unfinished workflows are cancelled on it
        and go back to placement (a deletion does not use up an attempt); its session ends."""
        session = self.fleet.connected(runner_id)
        if session is not None:
            session.enabled = False
            for workflow_id, attempt in list(session.held.items()):
                session.send(session_pb2.ConnectResponse(
                    cancel=session_pb2.Cancel(workflow_id=workflow_id, attempt=attempt)))
        count = await self.requeue(runner_id, why="runner deleted", counts=False)
        self.fleet.forget(runner_id)
        return count
