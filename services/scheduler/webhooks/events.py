"""Event types, endpoint filters and delivery bodies: pure functions of a WorkflowEvent.

An event's type is its kind ("executing", "progress", "output", "log") or, for a status
change, "status.<status>" ("status.completed"). A filter entry is "*", a kind (which
"status" covers every status of) or one exact status type. A delivery's body is
    {"type": <type>, "timestamp": <event time, RFC 3339>, "data": {...}}
with `data` holding the workflow id, the event's seq and its fields. Output files are
described (id, node, name, type, size) but not linked: a signed URL would expire before a
late retry; receivers fetch GET /v1/workflow/{id}/outputs.
"""

from __future__ import annotations

import json
from typing import Any

from comfyfleet.scheduler.v1 import workflow_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from services.scheduler.errors import InvalidArgument

KINDS = ("status", "executing", "progress", "output", "log")
STATUSES = ("accepted", "uploaded", "queued", "running", "completed", "failed", "cancelled", "invalid")
EVERYTHING = "*"
MAX_FILTERS = 20
# What a workflow's own webhook_url gets: every status change (the terminal one included).
WORKFLOW_URL_FILTER = ("status",)

Json = dict[str, Any]


def parse_filters(raw: list[str]) -> list[str]:
    """The checked filter of a new endpoint: ["*"] when empty; duplicates dropped."""
    filters: list[str] = []
    for item in raw:
        entry = item.strip()
        kind, dot, status = entry.partition(".")
        known = entry == EVERYTHING or (not dot and kind in KINDS) or (kind == "status" and status in STATUSES)
        if not known:
            raise InvalidArgument(
                f"unknown event filter {item!r}: expected *, one of {', '.join(KINDS)}, or status.<status> "
                f"with a status among {', '.join(STATUSES)}",
                reason="INVALID_EVENT_FILTER", details=[{"field": "events", "value": item}])
        if entry not in filters:
            filters.append(entry)
    if len(filters) > MAX_FILTERS:
        raise InvalidArgument(f"events: at most {MAX_FILTERS} filters", reason="INVALID_EVENT_FILTER",
                              details=[{"field": "events"}])
    return filters or [EVERYTHING]


def matches(filters: list[str] | tuple[str, ...], event_type: str) -> bool:
    kind = event_type.partition(".")[0]
    return any(f in (EVERYTHING, event_type, kind) for f in filters)


def status_word(status: int) -> str:
    return workflow_pb2.WorkflowStatus.Name(status).removeprefix("WORKFLOW_STATUS_").lower()  # type: ignore[arg-type]


def event_type(event: workflow_pb2.WorkflowEvent) -> str:
    kind = event.WhichOneof("kind") or "unknown"
    if kind == "status":
        return f"status.{status_word(event.status.workflow.status)}"
    return kind


def _time(ts: Timestamp) -> str | None:
    if not ts.seconds and not ts.nanos:
        return None
    return ts.ToDatetime().strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _output(out: workflow_pb2.Output) -> Json:
    return {"id": out.id, "node_id": out.node_id, "filename": out.filename,
            "content_type": out.object.content_type, "size": out.object.size_bytes}


def _workflow(wf: workflow_pb2.Workflow) -> Json:
    summary: Json = {
        "id": wf.id, "name": wf.name, "status": status_word(wf.status), "tags": list(wf.tags),
        "runner_id": wf.runner_id or None, "attempt": wf.attempt,
        **{name: _time(getattr(wf, name)) for name in ("created_at", "updated_at", "started_at", "completed_at")},
        "outputs": [_output(o) for o in wf.outputs],
    }
    if wf.HasField("failure"):
        summary.update(error_node=wf.failure.node_id or None, exception_type=wf.failure.exception_type or None,
                       exception_message=wf.failure.exception_message or None)
    if wf.node_errors:
        summary["node_errors"] = [{"node_id": e.node_id, "type": e.type, "message": e.message}
                                  for e in wf.node_errors]
    return summary


def data(event: workflow_pb2.WorkflowEvent) -> Json:
    fields: Json = {"workflow_id": event.workflow_id, "seq": event.seq}
    kind = event.WhichOneof("kind")
    if kind == "status":
        fields["workflow"] = _workflow(event.status.workflow)
    elif kind == "executing":
        fields.update(node_id=event.executing.node_id, node_type=event.executing.node_type)
    elif kind == "progress":
        p = event.progress
        fields.update(node_id=p.node_id, node_type=p.node_type, value=p.value, max=p.max)
    elif kind == "output":
        fields["output"] = _output(event.output.output)
    elif kind == "log":
        fields.update(level=workflow_pb2.LogLevel.Name(event.log.level).removeprefix("LOG_LEVEL_").lower(),
                      message=event.log.message)
    return fields


def body(event: workflow_pb2.WorkflowEvent) -> str:
    """The JSON body of every delivery of `event` (fixed once made: signatures cover it)."""
    return json.dumps({"type": event_type(event), "timestamp": _time(event.time), "data": data(event)},
                      separators=(",", ":"))
