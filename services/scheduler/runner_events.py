"""How one runner event changes a workflow's row, and the events that say so: the pure part of
applying what a runner reports (Execution.event_arrived runs it inside the event's change,
after checking that the event is for the runner's current attempt and not a repeat).

Status changes go through the state machine (core/state.py): an event the row's status does
not allow raises IllegalTransition, and the change is dropped.
"""

from __future__ import annotations

import json

from comfyfleet.runner.v1 import runner_event_pb2
from comfyfleet.scheduler.v1 import workflow_pb2
from google.protobuf.json_format import MessageToDict

from services.scheduler.core.state import Status, transition
from services.scheduler.db.models import OutputRow, WorkflowRow
from services.scheduler.records import output_pb, utcnow
from services.scheduler.workflows import log_event, status_event


def apply_runner_event(
    r: WorkflowRow, event: runner_event_pb2.RunnerEvent, outputs: list[OutputRow]
) -> list[workflow_pb2.WorkflowEvent]:
    """How one runner event changes the row, and the events that say so."""
    kind = event.WhichOneof("kind")
    status = Status(r.status)
    now = utcnow()
    if kind == "uploaded":
        r.status = transition(status, Status.UPLOADED).value
        return [status_event()]
    if kind == "queued":
        q = event.queued
        if status is Status.QUEUED and r.queue_number == q.queue_number:
            return []
        r.status = transition(status, Status.QUEUED).value
        r.prompt_id = q.prompt_id or r.prompt_id
        r.queue_number = q.queue_number
        return [status_event()]
    if kind == "running":
        r.status = transition(status, Status.RUNNING).value
        r.prompt_id = event.running.prompt_id or r.prompt_id
        r.queue_number = None
        r.started_at = r.started_at or now
        return [status_event()]
    if kind == "executing":
        e = event.executing
        executing = workflow_pb2.ExecutingEvent(node_id=e.node_id, node_type=e.node_type)
        return [workflow_pb2.WorkflowEvent(executing=executing)]
    if kind == "progress":
        p = event.progress
        return [workflow_pb2.WorkflowEvent(progress=workflow_pb2.ProgressEvent(
            node_id=p.node_id, node_type=p.node_type, value=p.value, max=p.max))]
    if kind == "output_stored":
        stored = next(o for o in outputs if o.object_key == event.output_stored.object.key)
        return [workflow_pb2.WorkflowEvent(output=workflow_pb2.OutputEvent(output=output_pb(stored)))]
    if kind == "log":
        return [log_event(event.log.message, event.log.level)]
    if kind == "completed":
        r.status = transition(status, Status.COMPLETED).value
    elif kind == "failed":
        r.status = transition(status, Status.FAILED).value
        r.failure_json = json.dumps(MessageToDict(event.failed.failure, preserving_proto_field_name=True))
    elif kind == "invalid":
        r.status = transition(status, Status.INVALID).value
        r.node_errors_json = json.dumps([MessageToDict(e, preserving_proto_field_name=True)
                                         for e in event.invalid.node_errors])
        r.failure_json = json.dumps({"exception_type": "ValidationError", "exception_message": event.invalid.message})
    elif kind == "cancelled":
        r.status = transition(status, Status.CANCELLED).value
    else:
        return []
    r.queue_number = None
    r.completed_at = now
    return [status_event()]
