"""What users do with workflows: create, read, list, cancel, watch, rerun, delete.

Input files are kept until their workflow is deleted, so that a rerun can reuse them: it
copies each file it reuses under its own id, so every workflow owns exactly the objects
under `inputs/{id}/` and `outputs/{id}/`, and deleting it deletes those two prefixes.

The runner side (assignments, runner events, requeue) is in `execution.py`; both change
workflows only through `WorkflowStore.change` and the state machine in `core/state.py`.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from comfyfleet.runner.v1 import runner_session_service_pb2 as session_pb2
from comfyfleet.scheduler.v1 import workflow_pb2, workflow_service_pb2
from comfyfleet.storage.v1 import object_pb2
from google.protobuf.json_format import MessageToDict, ParseDict

from services.scheduler import idempotency
from services.scheduler.core import placeholders
from services.scheduler.core.graph import check_links, normalise_tags, parse_graph
from services.scheduler.core.state import Status, transition
from services.scheduler.db.changes import new_workflow_row
from services.scheduler.db.creates import OpenLimitReached
from services.scheduler.db.identity_store import IdentityStore
from services.scheduler.db.models import OutputRow, UserRow, WorkflowRow
from services.scheduler.db.workflow_store import Change, WorkflowStore
from services.scheduler.errors import (
    AlreadyTerminal,
    Conflict,
    InvalidArgument,
    InvalidWorkflow,
    NotFound,
    Unavailable,
    WorkflowNotFinished,
)
from services.scheduler.fleet import Fleet
from services.scheduler.hub import EventHub
from services.scheduler.idempotency import Claim
from services.scheduler.limits import Limits, over
from services.scheduler.records import PB_TO_STATUS, utcnow, with_graph, workflow_pb
from services.scheduler.storage_client import ObjectStore
from services.scheduler.watch import watch as watch_stream

if TYPE_CHECKING:
    from services.scheduler.execution import Reservation

MAX_NAME = 200


class Placer(Protocol):
    """What a create needs of placement (Execution): a pass for what it leaves waiting, or a
    slot for it at once."""

    def kick(self) -> None: ...

    def reserve_new(self, row: WorkflowRow) -> Reservation | None: ...

    async def dispatch(self, reservation: Reservation, change: Change | None) -> None: ...


def status_event() -> workflow_pb2.WorkflowEvent:
    """A status event; the store fills in the workflow as committed."""
    return workflow_pb2.WorkflowEvent(status=workflow_pb2.StatusEvent())


def log_event(message: str, level: int = workflow_pb2.LOG_LEVEL_INFO) -> workflow_pb2.WorkflowEvent:
    return workflow_pb2.WorkflowEvent(log=workflow_pb2.LogEvent(level=level, message=message))  # type: ignore[arg-type]


def stored_fields(row: WorkflowRow) -> list[placeholders.FieldValue]:
    return [placeholders.FieldValue(f["field"], f.get("value", ""), f.get("is_file", False))
            for f in json.loads(row.inputs_json)]


class Workflows:
    def __init__(
        self,
        store: WorkflowStore,
        identity: IdentityStore,
        hub: EventHub,
        fleet: Fleet,
        *,
        placement: Placer,
        finished: Callable[[WorkflowRow], None],
        storage: ObjectStore | None = None,
        limits: Limits | None = None,
    ) -> None:
        self.storage = storage
        self.limits = limits
        self.store = store
        self.identity = identity
        self.hub = hub
        self.fleet = fleet
        self.placement = placement
        self.finished = finished

    async def create(
        self, user: UserRow, req: workflow_service_pb2.CreateWorkflowRequest, claim: Claim | None = None
    ) -> workflow_pb2.Workflow:
        """The new workflow (accepted); with an Idempotency-Key seen before, the first answer.

        `claim` is given by rerun and template run (their own fingerprints); a plain create
        makes it from `req.idempotency_key`."""
        if claim is None:
            claim = idempotency.claim(req.idempotency_key, "create", req.inputs, name=req.name,
                                      workflow_json=req.workflow_json, tags=list(req.tags), priority=req.priority,
                                      webhook_url=req.webhook_url)
        if claim is not None and (replayed := await self.store.replay(user.id, claim)) is not None:
            return replayed
        try:
            workflow_id = str(uuid.UUID(req.id)) if req.id else str(uuid.uuid4())
        except ValueError:
            raise InvalidArgument("id must be a UUID", details=[{"field": "id"}]) from None
        name = req.name.strip()
        if not 1 <= len(name) <= MAX_NAME:
            raise InvalidArgument(f"name must be 1 to {MAX_NAME} characters", reason="INVALID_NAME",
                                  details=[{"field": "name"}])
        if not req.workflow_json.strip():
            raise InvalidWorkflow("workflow_json is required", reason="MISSING_FIELD",
                                  details=[{"field": "workflow_json"}])
        graph = parse_graph(req.workflow_json)
        check_links(graph)
        tags = normalise_tags(list(req.tags))
        found = placeholders.scan(graph)
        if self.limits is not None:
            self.limits.check_parameters(user, len({p.field for p in found if p.field}))
        fields = [placeholders.FieldValue(i.field, i.value, i.HasField("object")) for i in req.inputs]
        binding = placeholders.bind(found, fields)
        await self._check_tags_can_match(user, tags)
        # The concurrent_workflows limit is checked by the create's own transaction (one trip).
        max_open = self.limits.of(user).concurrent_workflows if self.limits is not None else None

        now = utcnow()
        preview = []
        seen: set[str] = set()
        for p in found:
            if p.field in binding.values and p.field not in seen:
                preview.append((p.raw, binding.values[p.field]))
                seen.add(p.field)
        inputs = []
        for i in req.inputs:
            entry: dict[str, object] = {"field": i.field, "value": i.value, "is_file": i.HasField("object")}
            if i.HasField("object"):
                entry["object"] = MessageToDict(i.object, preserving_proto_field_name=True)
                entry["filename"] = i.filename
            inputs.append(entry)
        row = new_workflow_row(
            id=workflow_id,
            user_id=user.id,
            name=name,
            status=Status.ACCEPTED.value,
            tags_json=json.dumps(tags),
            priority=req.priority or workflow_pb2.PRIORITY_NORMAL,
            workflow_json=req.workflow_json,
            inputs_json=json.dumps(inputs),
            params_json=json.dumps(preview),
            created_at=now,
            updated_at=now,
        )
        # The commit and what follows it (publish, and a kick or the assignment's dispatch)
        # finish even if the caller is cancelled: a committed workflow is never left
        # unannounced, nor holding a slot it was not sent to.
        insert = asyncio.ensure_future(self._insert(row, claim, max_open))
        try:
            change = await asyncio.shield(insert)
        except asyncio.CancelledError:
            self.store.db.adopt(insert)
            raise
        except OpenLimitReached as err:
            raise over("concurrent_workflows", max_open or 0, err.used) from None
        if change.replayed is not None:  # the same request raced this one and won
            return change.replayed
        return with_graph(change.events[0].status.workflow, row.workflow_json)  # the event's, made once

    async def _insert(self, row: WorkflowRow, claim: Claim | None, max_open: int | None) -> Change:
        """Commits the new workflow, placed at once when a runner can take it (`reserve_new`),
        and publishes its events."""
        reservation = self.placement.reserve_new(row)
        try:
            change = await self.store.create(row, claim, max_open=max_open,
                                             then=reservation.assign if reservation is not None else None)
        except BaseException:
            if reservation is not None:
                await self.placement.dispatch(reservation, None)
            raise
        if change.replayed is not None:
            if reservation is not None:
                await self.placement.dispatch(reservation, None)
            return change
        self.hub.publish(change.events)
        if reservation is None:
            self.placement.kick()
        else:
            await self.placement.dispatch(reservation, change)
        return change

    async def rerun(self, user: UserRow, req: workflow_service_pb2.RerunWorkflowRequest) -> workflow_pb2.Workflow:
        """A new workflow from `req.id`: same name, tags, graph; `req.inputs` replace stored fields."""
        source, _ = await self.store.get(req.id, user.id)
        try:
            new_id = str(uuid.UUID(req.new_id)) if req.new_id else str(uuid.uuid4())
        except ValueError:
            raise InvalidArgument("new_id must be a UUID", details=[{"field": "new_id"}]) from None
        claim = idempotency.claim(req.idempotency_key, f"rerun:{source.id}", req.inputs, priority=req.priority)
        if claim is not None and (replayed := await self.store.replay(user.id, claim)) is not None:
            return replayed  # before copying any file
        changed = {i.field for i in req.inputs}
        kept = [e for e in json.loads(source.inputs_json) if e["field"] not in changed]
        # Check the merged fields before copying anything.
        fields = [placeholders.FieldValue(i.field, i.value, i.HasField("object")) for i in req.inputs]
        fields += [placeholders.FieldValue(e["field"], e.get("value", ""), e.get("is_file", False)) for e in kept]
        placeholders.bind(placeholders.scan(parse_graph(source.workflow_json)), fields)
        inputs = list(req.inputs)
        for entry in kept:
            if entry.get("is_file"):
                inputs.append(await self._copy_input(entry, new_id))
            else:
                inputs.append(workflow_service_pb2.WorkflowInput(field=entry["field"], value=entry.get("value", "")))
        return await self.create(user, workflow_service_pb2.CreateWorkflowRequest(
            id=new_id,
            name=source.name,
            workflow_json=source.workflow_json,
            tags=json.loads(source.tags_json),
            inputs=inputs,
            priority=req.priority or source.priority,  # type: ignore[arg-type]
        ), claim)

    async def _copy_input(self, entry: dict[str, Any], new_id: str) -> workflow_service_pb2.WorkflowInput:
        if self.storage is None:
            raise Unavailable("storage is not configured", reason="STORAGE_UNAVAILABLE")
        field = str(entry["field"])
        source = ParseDict(entry["object"], object_pb2.ObjectRef())
        target = f"inputs/{new_id}/{field[1:]}/{source.key.rsplit('/', 1)[-1]}"
        try:
            copied = await self.storage.copy(source.key, target)
        except NotFound:
            raise Conflict(f"the file of {field} is no longer stored; send it again", reason="INPUT_GONE",
                           details=[{"field": field}]) from None
        return workflow_service_pb2.WorkflowInput(field=field, object=copied, filename=str(entry.get("filename", "")))

    async def delete(self, user: UserRow, workflow_id: str) -> None:
        """Removes a finished workflow: objects first (a storage outage leaves it intact), then rows."""
        row, _ = await self.store.get(workflow_id, user.id)
        if not Status(row.status).terminal:
            raise WorkflowNotFinished(workflow_id, row.status)
        if self.storage is None:
            raise Unavailable("storage is not configured", reason="STORAGE_UNAVAILABLE")
        for prefix in (f"inputs/{workflow_id}/", f"outputs/{workflow_id}/"):
            await self.storage.delete_prefix(prefix)
        await self.store.delete(workflow_id, user.id)

    async def _check_tags_can_match(self, user: UserRow, tags: list[str]) -> None:
        if not tags:
            return
        wanted = set(tags)
        for runner in await self.identity.runners_of(user.id):
            if runner.status == "active" and wanted <= set(json.loads(runner.tags_json)):
                return
        raise InvalidArgument(
            f"no enabled runner has all of the tags {', '.join(tags)}",
            reason="NO_MATCHING_RUNNER",
            details=[{"field": "tags", "tags": tags}],
        )

    async def get(self, user: UserRow, workflow_id: str) -> workflow_pb2.Workflow:
        row, outputs = await self.store.get(workflow_id, user.id)
        return workflow_pb(row, outputs)

    async def list(
        self, user: UserRow, req: workflow_service_pb2.ListWorkflowsRequest
    ) -> tuple[list[workflow_pb2.Workflow], int]:
        page = req.page or 1
        per_page = req.per_page or 10
        if page < 1:
            raise InvalidArgument("page must be 1 or more", details=[{"field": "page"}])
        if not 1 <= per_page <= 100:
            raise InvalidArgument("per_page must be 1 to 100", details=[{"field": "per_page"}])
        status = PB_TO_STATUS[req.status].value if req.status else None
        rows, total = await self.store.list_page(user.id, page=page, per_page=per_page, status=status,
                                            tag=req.tag or None)
        return [workflow_pb(r) for r in rows], total

    async def cancel(self, user: UserRow, workflow_id: str) -> workflow_pb2.Workflow:
        await self.store.get(workflow_id, user.id)  # NotFound unless it is the caller's
        return await self.cancel_any(workflow_id)

    async def cancel_any(self, workflow_id: str) -> workflow_pb2.Workflow:
        """Cancels a workflow whoever owns it (a runner's owner interrupting it, an admin)."""
        row, _ = await self.store.get(workflow_id)
        if Status(row.status).terminal:
            raise AlreadyTerminal(f"workflow is already {row.status}", details=[{"id": workflow_id}])
        session = self.fleet.connected(row.runner_id) if row.runner_id else None

        def mutate(r: WorkflowRow, _outputs: list[OutputRow]) -> list[workflow_pb2.WorkflowEvent]:
            status = Status(r.status)
            if status.terminal:
                raise AlreadyTerminal(f"workflow is already {r.status}", details=[{"id": workflow_id}])
            if session is not None and r.runner_id == session.runner_id:
                r.cancel_requested = True
                return [log_event("cancel requested; asking the runner to stop it")]
            r.status = transition(status, Status.CANCELLED).value
            r.completed_at = utcnow()
            r.queue_number = None
            return [status_event()]

        change = await self.store.change(workflow_id, mutate)
        self.hub.publish(change.events)
        if Status(change.row.status).terminal:
            self.fleet.release(change.row.runner_id, workflow_id)
            self.finished(change.row)
        elif session is not None:
            session.send(session_pb2.ConnectResponse(
                cancel=session_pb2.Cancel(workflow_id=workflow_id, attempt=change.row.attempt)))
        row, outputs = await self.store.get(workflow_id)
        return workflow_pb(row, outputs)

    def watch(
        self, user: UserRow, req: workflow_service_pb2.WatchWorkflowRequest,
        checked: Callable[[], Awaitable[None]] | None = None,
    ) -> AsyncIterator[workflow_service_pb2.WatchWorkflowResponse]:
        """The watch stream of one of the user's workflows (services/scheduler/watch.py)."""
        return watch_stream(self.store, self.hub, user.id, req, checked)

