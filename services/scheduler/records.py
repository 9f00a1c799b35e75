"""Translation between table rows and the contract's messages (comfyfleet.scheduler.v1)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from comfyfleet.scheduler.v1 import runner_pb2, template_pb2, user_pb2, workflow_pb2
from comfyfleet.storage.v1 import object_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from services.scheduler.core.runner_fields import masked
from services.scheduler.core.state import Status
from services.scheduler.db.models import OutputRow, RunnerRow, TemplateRow, UserRow, WorkflowRow

STATUS_TO_PB = {
    Status.ACCEPTED: workflow_pb2.WORKFLOW_STATUS_ACCEPTED,
    Status.UPLOADED: workflow_pb2.WORKFLOW_STATUS_UPLOADED,
    Status.QUEUED: workflow_pb2.WORKFLOW_STATUS_QUEUED,
    Status.RUNNING: workflow_pb2.WORKFLOW_STATUS_RUNNING,
    Status.COMPLETED: workflow_pb2.WORKFLOW_STATUS_COMPLETED,
    Status.FAILED: workflow_pb2.WORKFLOW_STATUS_FAILED,
    Status.CANCELLED: workflow_pb2.WORKFLOW_STATUS_CANCELLED,
    Status.INVALID: workflow_pb2.WORKFLOW_STATUS_INVALID,
}
PB_TO_STATUS = {v: k for k, v in STATUS_TO_PB.items()}


def utcnow() -> datetime:
    return datetime.now(UTC)


_EPOCH = datetime(1970, 1, 1)
_EPOCH_UTC = _EPOCH.replace(tzinfo=UTC)


def set_time(target: Timestamp, value: datetime) -> None:
    """`target.FromDatetime(value)` (a naive value is UTC), a few times cheaper."""
    delta = value - (_EPOCH if value.tzinfo is None else _EPOCH_UTC)
    target.seconds = delta.days * 86400 + delta.seconds
    target.nanos = delta.microseconds * 1000


def ts(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    t = Timestamp()
    set_time(t, value)
    return t


def output_pb(row: OutputRow) -> workflow_pb2.Output:
    return workflow_pb2.Output(
        id=row.id,
        node_id=row.node_id,
        filename=row.filename,
        object=object_pb2.ObjectRef(
            key=row.object_key, size_bytes=row.size_bytes, sha256=row.sha256, content_type=row.content_type
        ),
    )


def workflow_pb(row: WorkflowRow, outputs: list[OutputRow] | None = None, *, graph: bool = True
                ) -> workflow_pb2.Workflow:
    """The record as the API shows it; `graph=False` leaves workflow_json out (the snapshot of a
    status event: see `StatusEvent` in workflow.proto)."""
    wf = workflow_pb2.Workflow(
        id=row.id,
        user_id=row.user_id,
        name=row.name,
        status=STATUS_TO_PB[Status(row.status)],
        tags=json.loads(row.tags_json),
        runner_id=row.runner_id or "",
        workflow_json=row.workflow_json if graph else "",
        params=[workflow_pb2.WorkflowParam(placeholder=p, value=v) for p, v in json.loads(row.params_json)],
        prompt_id=row.prompt_id,
        attempt=row.attempt,
        priority=row.priority,  # type: ignore[arg-type]
        last_seq=row.last_seq,
        outputs=[output_pb(o) for o in outputs or []],
    )
    set_time(wf.created_at, row.created_at)
    set_time(wf.updated_at, row.updated_at)
    if row.started_at is not None:
        set_time(wf.started_at, row.started_at)
    if row.completed_at is not None:
        set_time(wf.completed_at, row.completed_at)
    if row.queue_number is not None:
        wf.queue_number = row.queue_number
    if row.failure_json:
        wf.failure.CopyFrom(workflow_pb2.Failure(**json.loads(row.failure_json)))
    wf.node_errors.extend(workflow_pb2.NodeError(**e) for e in json.loads(row.node_errors_json))
    return wf


def with_graph(snapshot: workflow_pb2.Workflow, workflow_json: str) -> workflow_pb2.Workflow:
    """A copy of a status event's `snapshot` with the graph it leaves out (a create's answer)."""
    answer = workflow_pb2.Workflow()
    answer.CopyFrom(snapshot)
    answer.workflow_json = workflow_json
    return answer


def user_pb(row: UserRow) -> user_pb2.User:
    user = user_pb2.User(id=row.id, name=row.name, email=row.email, tier=row.tier)
    for name in ("created_at", "updated_at"):
        if (value := ts(getattr(row, name))) is not None:
            getattr(user, name).CopyFrom(value)
    return user


RUNNER_STATUS_TO_PB = {"active": runner_pb2.RUNNER_STATUS_ACTIVE, "disabled": runner_pb2.RUNNER_STATUS_DISABLED}
PB_TO_RUNNER_STATUS = {v: k for k, v in RUNNER_STATUS_TO_PB.items()}


def runner_pb(row: RunnerRow, *, online: bool = False, in_flight: int = 0) -> runner_pb2.Runner:
    """A runner as responses show it: header values masked, connection from the fleet."""
    runner = runner_pb2.Runner(
        id=row.id,
        user_id=row.user_id,
        name=row.name,
        status=RUNNER_STATUS_TO_PB.get(row.status, runner_pb2.RUNNER_STATUS_ACTIVE),
        endpoint=row.endpoint,
        tags=json.loads(row.tags_json),
        headers=masked(json.loads(row.headers_json)),
        connection=runner_pb2.RUNNER_CONNECTION_ONLINE if online else runner_pb2.RUNNER_CONNECTION_OFFLINE,
        slots=row.slots,
        in_flight=in_flight,
        comfyui_version=row.comfyui_version,
    )
    for name in ("created_at", "updated_at", "last_seen_at"):
        if (value := ts(getattr(row, name))) is not None:
            getattr(runner, name).CopyFrom(value)
    return runner


def template_pb(row: TemplateRow, *, with_body: bool = True) -> template_pb2.Template:
    template = template_pb2.Template(id=row.id, user_id=row.user_id, name=row.name, description=row.description,
                                     body=row.body if with_body else "")
    for name in ("created_at", "updated_at"):
        if (value := ts(getattr(row, name))) is not None:
            getattr(template, name).CopyFrom(value)
    return template
