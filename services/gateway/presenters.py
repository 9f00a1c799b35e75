"""Protobuf messages -> the JSON of API.md. Pure functions: no I/O, no clock.

Status and priority enums become lowercase words (`accepted`, `high`); timestamps become
RFC 3339 UTC strings ending in `Z`, or null when unset; empty optional strings become null.
Signed output URLs are computed by the caller and passed in (`src`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from comfyfleet.scheduler.v1 import runner_pb2, template_pb2, user_pb2, workflow_pb2
from google.protobuf import timestamp_pb2

Json = dict[str, Any]

STATUS_NAMES: dict[int, str] = {
    workflow_pb2.WORKFLOW_STATUS_ACCEPTED: "accepted",
    workflow_pb2.WORKFLOW_STATUS_UPLOADED: "uploaded",
    workflow_pb2.WORKFLOW_STATUS_QUEUED: "queued",
    workflow_pb2.WORKFLOW_STATUS_RUNNING: "running",
    workflow_pb2.WORKFLOW_STATUS_COMPLETED: "completed",
    workflow_pb2.WORKFLOW_STATUS_FAILED: "failed",
    workflow_pb2.WORKFLOW_STATUS_CANCELLED: "cancelled",
    workflow_pb2.WORKFLOW_STATUS_INVALID: "invalid",
}
STATUS_BY_NAME: dict[str, workflow_pb2.WorkflowStatus.ValueType] = {
    name: workflow_pb2.WorkflowStatus.ValueType(value) for value, name in STATUS_NAMES.items()
}
PRIORITY_NAMES: dict[int, str] = {
    workflow_pb2.PRIORITY_UNSPECIFIED: "normal",
    workflow_pb2.PRIORITY_LOW: "low",
    workflow_pb2.PRIORITY_NORMAL: "normal",
    workflow_pb2.PRIORITY_HIGH: "high",
}
PRIORITY_BY_NAME: dict[str, workflow_pb2.Priority.ValueType] = {
    "low": workflow_pb2.PRIORITY_LOW,
    "normal": workflow_pb2.PRIORITY_NORMAL,
    "high": workflow_pb2.PRIORITY_HIGH,
}
LOG_LEVEL_NAMES: dict[int, str] = {
    workflow_pb2.LOG_LEVEL_UNSPECIFIED: "info",
    workflow_pb2.LOG_LEVEL_INFO: "info",
    workflow_pb2.LOG_LEVEL_WARNING: "warning",
    workflow_pb2.LOG_LEVEL_ERROR: "error",
}
TERMINAL_STATUSES = frozenset({
    workflow_pb2.WORKFLOW_STATUS_COMPLETED,
    workflow_pb2.WORKFLOW_STATUS_FAILED,
    workflow_pb2.WORKFLOW_STATUS_CANCELLED,
    workflow_pb2.WORKFLOW_STATUS_INVALID,
})


def rfc3339(ts: timestamp_pb2.Timestamp | None) -> str | None:
    """`2025-01-02T03:04:05Z` (fractional seconds only when present), None when unset."""
    return None if ts is None else ts.ToJsonString()


def status_name(status: int) -> str:
    return STATUS_NAMES.get(status, "unspecified")


def _or_null(value: str) -> str | None:
    return value or None


def _times(wf: workflow_pb2.Workflow) -> Json:
    return {
        "created_at": rfc3339(wf.created_at if wf.HasField("created_at") else None),
        "updated_at": rfc3339(wf.updated_at if wf.HasField("updated_at") else None),
        "started_at": rfc3339(wf.started_at if wf.HasField("started_at") else None),
        "completed_at": rfc3339(wf.completed_at if wf.HasField("completed_at") else None),
    }


def workflow_summary(wf: workflow_pb2.Workflow) -> Json:
    """The short form: the 201 of create and each item of the list."""
    return {
        "id": wf.id,
        "name": wf.name,
        "status": status_name(wf.status),
        "tags": list(wf.tags),
        **_times(wf),
    }


def _parsed_graph(text: str) -> Any:
    """The stored graph as JSON; the raw text if it somehow is not JSON (never a 500)."""
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def workflow_record(wf: workflow_pb2.Workflow) -> Json:
    """The full record of GET /v1/workflow/{id}."""
    failure = wf.failure if wf.HasField("failure") else None
    return {
        **workflow_summary(wf),
        "user_id": wf.user_id,
        "runner_id": _or_null(wf.runner_id),
        "workflow_json": _parsed_graph(wf.workflow_json),
        "workflow_params": [[param.placeholder, param.value] for param in wf.params],
        "prompt_id": _or_null(wf.prompt_id),
        "queue_number": wf.queue_number if wf.HasField("queue_number") else None,
        "error_node": _or_null(failure.node_id) if failure else None,
        "exception_type": _or_null(failure.exception_type) if failure else None,
        "exception_message": _or_null(failure.exception_message) if failure else None,
        "traceback": list(failure.traceback) if failure else [],
        "node_errors": [
            {
                "node_id": error.node_id,
                "class_type": error.class_type,
                "type": error.type,
                "message": error.message,
                "details": error.details,
                "input_name": _or_null(error.input_name),
            }
            for error in wf.node_errors
        ],
        "attempt": wf.attempt,
        "priority": PRIORITY_NAMES.get(wf.priority, "normal"),
        "output_count": len(wf.outputs),
    }


def output(out: workflow_pb2.Output, workflow_id: str, src: str) -> Json:
    """One stored output, as in GET .../outputs and the `output` SSE event."""
    return {
        "id": out.id,
        "workflow_id": workflow_id,
        "src": src,
        "filename": out.filename,
        "content_type": out.object.content_type or "application/octet-stream",
        "size": out.object.size_bytes,
        "node_id": out.node_id,
    }


def outputs(wf: workflow_pb2.Workflow, srcs: Mapping[str, str]) -> list[Json]:
    """Every output of `wf`; `srcs` maps object keys to signed URLs."""
    return [output(out, wf.id, srcs.get(out.object.key, "")) for out in wf.outputs]


def snapshot(wf: workflow_pb2.Workflow, srcs: Mapping[str, str]) -> Json:
    """ComfyControl's subscription snapshot (used for `snapshot` and `status` frames), plus `id`."""
    failure = wf.failure if wf.HasField("failure") else None
    cause = None
    if failure is not None and (failure.exception_type or failure.exception_message or failure.node_type):
        cause = {
            "node_type": failure.node_type,
            "exception_type": failure.exception_type,
            "exception_message": failure.exception_message,
        }
    times = _times(wf)
    return {
        "id": wf.id,
        "status": status_name(wf.status),
        "prompt": {"prompt_id": wf.prompt_id} if wf.prompt_id else None,
        "queue_number": wf.queue_number if wf.HasField("queue_number") else None,
        "outputs": outputs(wf, srcs),
        "cause": cause,
        "started_at": times["started_at"],
        "completed_at": times["completed_at"],
    }


def event_frame(event: workflow_pb2.WorkflowEvent, srcs: Mapping[str, str]) -> tuple[str, Json] | None:
    """(SSE event name, data) for one event; None for a kind this gateway does not know."""
    kind = event.WhichOneof("kind")
    if kind == "status":
        data = snapshot(event.status.workflow, srcs)
        data["id"] = data["id"] or event.workflow_id
        return "status", data
    if kind == "executing":
        return "executing", {"node_id": event.executing.node_id, "node_type": event.executing.node_type}
    if kind == "progress":
        progress = event.progress
        return "progress", {
            "node_id": progress.node_id,
            "node_type": progress.node_type,
            "value": progress.value,
            "max": progress.max,
        }
    if kind == "output":
        out = event.output.output
        return "output", output(out, event.workflow_id, srcs.get(out.object.key, ""))
    if kind == "log":
        return "log", {"level": LOG_LEVEL_NAMES.get(event.log.level, "info"), "message": event.log.message}
    return None


def object_keys(message: workflow_pb2.Workflow | workflow_pb2.WorkflowEvent) -> list[str]:
    """The output object keys a workflow or an event refers to (to presign before presenting)."""
    if isinstance(message, workflow_pb2.Workflow):
        return [out.object.key for out in message.outputs if out.object.key]
    kind = message.WhichOneof("kind")
    if kind == "status":
        return object_keys(message.status.workflow)
    if kind == "output" and message.output.output.object.key:
        return [message.output.output.object.key]
    return []


def user(u: user_pb2.User) -> Json:
    """GET /v1/user."""
    return {
        "id": u.id,
        "name": u.name,
        "email": u.email,
        "tier": u.tier,
        "created_at": rfc3339(u.created_at if u.HasField("created_at") else None),
        "updated_at": rfc3339(u.updated_at if u.HasField("updated_at") else None),
    }


RUNNER_STATUS_NAMES: dict[int, str] = {
    runner_pb2.RUNNER_STATUS_ACTIVE: "active",
    runner_pb2.RUNNER_STATUS_DISABLED: "disabled",
}
RUNNER_STATUS_BY_NAME: dict[str, runner_pb2.RunnerStatus.ValueType] = {
    "active": runner_pb2.RUNNER_STATUS_ACTIVE,
    "disabled": runner_pb2.RUNNER_STATUS_DISABLED,
}


def _time(message: Any, name: str) -> str | None:
    return rfc3339(getattr(message, name) if message.HasField(name) else None)


def runner(r: runner_pb2.Runner) -> Json:
    """A runner (header values arrive masked from the scheduler)."""
    return {
        "id": r.id,
        "user_id": r.user_id,
        "name": r.name,
        "status": RUNNER_STATUS_NAMES.get(r.status, "active"),
        "endpoint": _or_null(r.endpoint),
        "tags": list(r.tags),
        "headers": dict(sorted(r.headers.items())),
        "created_at": _time(r, "created_at"),
        "updated_at": _time(r, "updated_at"),
        "connection": "online" if r.connection == runner_pb2.RUNNER_CONNECTION_ONLINE else "offline",
        "last_seen_at": _time(r, "last_seen_at"),
        "slots": r.slots,
        "in_flight": r.in_flight,
        "comfyui_version": _or_null(r.comfyui_version),
    }


def template(t: template_pb2.Template, *, with_body: bool = True) -> Json:
    """A template; the list leaves out `body`."""
    shown: Json = {"id": t.id, "user_id": t.user_id, "name": t.name, "description": t.description}
    if with_body:
        shown["body"] = _parsed_graph(t.body)
    shown["created_at"] = _time(t, "created_at")
    shown["updated_at"] = _time(t, "updated_at")
    return shown


def limits(found: user_pb2.UserLimits) -> Json:
    """`{"runners": {"max": 10, "used": 2}, ...}`; `used` is null for per-workflow limits."""
    shown: Json = {}
    for name in ("parameters_per_workflow", "runners", "templates", "concurrent_workflows"):
        limit = getattr(found, name)
        shown[name] = {"max": limit.max, "used": limit.used if limit.HasField("used") else None}
    return shown
