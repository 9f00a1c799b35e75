"""Typed views of the API's resources (API.md) and of the events of a workflow's SSE stream.

Every model accepts fields it does not know (`extra="allow"`), so an SDK older than the API
keeps working; `model_dump(mode="json")` gives the JSON back.

    >>> wf = client.workflows.get(workflow_id)
    >>> wf.status, wf.is_terminal, wf.created_at.year
    ('completed', True, 2026)
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled", "invalid"})
STATUSES = ("accepted", "uploaded", "queued", "running", "completed", "failed", "cancelled", "invalid")


class Model(BaseModel):
    """Base of every resource model: unknown fields are kept, not rejected."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)


class Output(Model):
    """One stored output; `src` is a signed URL that expires (5 minutes by default)."""

    id: str
    workflow_id: str = ""
    src: str = ""
    filename: str = ""
    content_type: str = "application/octet-stream"
    size: int = 0
    node_id: str = ""


class NodeError(Model):
    """One ComfyUI validation error of a node (an `invalid` workflow)."""

    node_id: str = ""
    class_type: str = ""
    type: str = ""
    message: str = ""
    details: str = ""
    input_name: str | None = None


class Workflow(Model):
    """A workflow: the short form (create, list) or the full record (get, cancel).

    The fields after `completed_at` are only filled in by the full record.
    """

    id: str
    name: str = ""
    status: str = ""
    tags: list[str] = Field(default_factory=list)
    created_at: datetime | None = None
    updated_at: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    user_id: str | None = None
    runner_id: str | None = None
    workflow_json: Any = None
    workflow_params: list[list[Any]] = Field(default_factory=list)
    prompt_id: str | None = None
    queue_number: int | None = None
    error_node: str | None = None
    exception_type: str | None = None
    exception_message: str | None = None
    node_errors: list[NodeError] = Field(default_factory=list)
    attempt: int | None = None
    priority: str | None = None

    @property
    def is_terminal(self) -> bool:
        """True once the workflow is completed, failed, cancelled or invalid."""
        return self.status in TERMINAL_STATUSES


class Page(Model):
    """One page of a list: its items and the total over all pages."""

    items: list[Any]
    total: int


class User(Model):
    """GET /v1/user: the caller."""

    id: str
    name: str = ""
    email: str = ""
    tier: str = ""
    created_at: datetime | None = None
    updated_at: datetime | None = None
    limits: dict[str, Any] | None = None


class Runner(Model):
    """A ComfyUI machine the suite drives; header values come back masked."""

    id: str
    user_id: str | None = None
    name: str = ""
    status: str = ""
    endpoint: str | None = None
    tags: list[str] = Field(default_factory=list)
    headers: dict[str, str] = Field(default_factory=dict)
    created_at: datetime | None = None
    updated_at: datetime | None = None
    connection: str | None = None
    last_seen_at: datetime | None = None
    slots: int | None = None
    in_flight: int | None = None
    comfyui_version: str | None = None


class RunnerToken(Model):
    """POST /v1/runner-token: a token for a self-registering runner agent (shown once)."""

    token: str
    expires_at: datetime | None = None


class Template(Model):
    """A saved workflow with placeholders, run with `templates.run(id, params=...)`."""

    id: str
    name: str = ""
    description: str = ""
    body: Any = None
    user_id: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


# ---- events of GET /v1/workflow/{id}/subscribe ------------------------------------------


class Event(Model):
    """One frame of a workflow's event stream; `seq` is its SSE id (the event's sequence number).

    From the fleet-wide stream (`client.events()`), `seq` is your own event number across all
    your workflows, and `workflow_id` says whose event it is."""

    seq: int
    kind: str
    workflow_id: str = ""


class StatusEvent(Event):
    """`snapshot` (the first frame of a fresh subscription) or `status` (a state change)."""

    kind: Literal["snapshot", "status"] = "status"
    workflow_id: str = Field(default="", alias="id")
    status: str = ""
    prompt: dict[str, Any] | None = None
    queue_number: int | None = None
    outputs: list[Output] = Field(default_factory=list)
    cause: dict[str, Any] | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


class ExecutingEvent(Event):
    """ComfyUI started executing a node."""

    kind: Literal["executing"] = "executing"
    node_id: str = ""
    node_type: str = ""


class ProgressEvent(Event):
    """Step progress of a node (`value` of `max`)."""

    kind: Literal["progress"] = "progress"
    node_id: str = ""
    node_type: str = ""
    value: int = 0
    max: int = 0


class OutputEvent(Event):
    """One output was stored."""

    kind: Literal["output"] = "output"
    output: Output


class LogEvent(Event):
    """A log line about the workflow."""

    kind: Literal["log"] = "log"
    level: str = "info"
    message: str = ""


class UnknownEvent(Event):
    """A kind of frame this SDK does not know yet; `data` is its JSON."""

    data: Any = None


AnyEvent = StatusEvent | ExecutingEvent | ProgressEvent | OutputEvent | LogEvent | UnknownEvent


def parse_event(seq: int, kind: str, data: Any) -> AnyEvent:
    """The typed event for one SSE frame (`id:`, `event:`, decoded `data:`)."""
    if kind in ("snapshot", "status") and isinstance(data, dict):
        return StatusEvent.model_validate({**data, "seq": seq, "kind": kind})
    if kind == "executing" and isinstance(data, dict):
        return ExecutingEvent.model_validate({**data, "seq": seq})
    if kind == "progress" and isinstance(data, dict):
        return ProgressEvent.model_validate({**data, "seq": seq})
    if kind == "output" and isinstance(data, dict):
        return OutputEvent(seq=seq, output=Output.model_validate(data), workflow_id=data.get("workflow_id", ""))
    if kind == "log" and isinstance(data, dict):
        return LogEvent.model_validate({**data, "seq": seq})
    return UnknownEvent(seq=seq, kind=kind, data=data)
