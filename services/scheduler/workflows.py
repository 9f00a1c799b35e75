"""What users do with workflows: create, read, list, cancel, watch.

The runner side (assignments, runner events, requeue) is in `execution.py`; both change
workflows only through `WorkflowStore.change` and the state machine in `core/state.py`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable

from comfyfleet.runner.v1 import runner_session_service_pb2 as session_pb2
from comfyfleet.scheduler.v1 import workflow_pb2, workflow_service_pb2
from google.protobuf.json_format import MessageToDict

from services.scheduler.core import placeholders
from services.scheduler.core.graph import normalise_tags, parse_graph
from services.scheduler.core.state import Status, transition
from services.scheduler.db.identity_store import IdentityStore
from services.scheduler.db.models import OutputRow, UserRow, WorkflowRow
from services.scheduler.db.workflow_store import WorkflowStore
from services.scheduler.errors import AlreadyTerminal, InvalidArgument, InvalidWorkflow
from services.scheduler.fleet import Fleet
from services.scheduler.hub import OVERFLOW, EventHub
from services.scheduler.records import PB_TO_STATUS, utcnow, workflow_pb

MAX_NAME = 200


def status_event() -> workflow_pb2.WorkflowEvent:
    """A status event; the store fills in the workflow as committed."""
    return workflow_pb2.WorkflowEvent(status=workflow_pb2.StatusEvent())


def log_event(message: str, level: int = workflow_pb2.LOG_LEVEL_INFO) -> workflow_pb2.WorkflowEvent:
    return workflow_pb2.WorkflowEvent(log=workflow_pb2.LogEvent(level=level, message=message))  # type: ignore[arg-type]


def is_terminal_event(event: workflow_pb2.WorkflowEvent) -> bool:
    return event.WhichOneof("kind") == "status" and PB_TO_STATUS[event.status.workflow.status].terminal


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
        kick: Callable[[], None],
        finished: Callable[[WorkflowRow], None],
    ) -> None:
        self.store = store
        self.identity = identity
        self.hub = hub
        self.fleet = fleet
        self.kick = kick
        self.finished = finished

    async def create(self, user: UserRow, req: workflow_service_pb2.CreateWorkflowRequest) -> WorkflowRow:
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
        tags = normalise_tags(list(req.tags))
        found = placeholders.scan(graph)
        fields = [placeholders.FieldValue(i.field, i.value, i.HasField("object")) for i in req.inputs]
        binding = placeholders.bind(found, fields)
        await self._check_tags_can_match(user, tags)

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
        row = WorkflowRow(
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
        change = await self.store.create(row)
        self.hub.publish(change.events)
        self.kick()
        return change.row

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
        row, _ = await self.store.get(workflow_id, user.id)
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

    async def watch(
        self, user: UserRow, req: workflow_service_pb2.WatchWorkflowRequest
    ) -> AsyncIterator[workflow_service_pb2.WatchWorkflowResponse]:
        """Snapshot (unless resuming), stored events after the cursor, then live ones."""
        await self.store.get(req.id, user.id)  # NotFound before anything is sent
        with self.hub.watch(req.id) as watcher:
            last = req.after_seq
            if req.after_seq == 0 and not req.from_start:
                row, outputs = await self.store.get(req.id)
                yield workflow_service_pb2.WatchWorkflowResponse(snapshot=workflow_pb(row, outputs))
                if Status(row.status).terminal:
                    return
                last = row.last_seq
            while True:
                batch = await self.store.events_after(req.id, last)
                for event in batch:
                    yield workflow_service_pb2.WatchWorkflowResponse(event=event)
                    last = event.seq
                    if is_terminal_event(event):
                        return
                if len(batch) < 500:
                    break
            # Resuming at or past the end of a finished workflow: nothing more will come.
            row, _ = await self.store.get(req.id)
            if Status(row.status).terminal and row.last_seq <= last:
                return
            while True:
                live = await watcher.queue.get()
                if live is OVERFLOW:
                    return  # too far behind: the client resumes with Last-Event-ID
                if live.seq <= last:
                    continue
                pending = [live] if live.seq == last + 1 else await self.store.events_after(req.id, last)
                for event in pending:
                    yield workflow_service_pb2.WatchWorkflowResponse(event=event)
                    last = event.seq
                    if is_terminal_event(event):
                        return
