"""Tables. JSON columns hold small structured values (tags, params, failure, node errors)."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, Index, SQLModel


class UserRow(SQLModel, table=True):
    __tablename__ = "users"
    id: str = Field(primary_key=True)
    name: str
    email: str = ""
    tier: str = "free"
    is_admin: bool = False
    created_at: datetime
    updated_at: datetime


class TokenRow(SQLModel, table=True):
    """An API or runner token; only its sha256 is stored."""

    __tablename__ = "tokens"
    id: str = Field(primary_key=True)
    user_id: str = Field(foreign_key="users.id", index=True)
    token_sha256: str = Field(unique=True)
    kind: str  # "api" | "runner"
    created_at: datetime
    expires_at: datetime | None = None
    last_used_at: datetime | None = None


class RunnerRow(SQLModel, table=True):
    __tablename__ = "runners"
    id: str = Field(primary_key=True)
    user_id: str = Field(foreign_key="users.id", index=True)
    name: str
    status: str = "active"  # active | disabled
    tags_json: str = "[]"
    slots: int = 1
    comfyui_version: str = ""
    object_info_digest: str = ""
    last_seen_at: datetime | None = None
    created_at: datetime
    updated_at: datetime


class WorkflowRow(SQLModel, table=True):
    __tablename__ = "workflows"
    __table_args__ = (
        Index("ix_workflows_user_created", "user_id", "created_at"),
        Index("ix_workflows_status_runner", "status", "runner_id"),
    )
    id: str = Field(primary_key=True)
    user_id: str = Field(foreign_key="users.id")
    name: str
    status: str
    tags_json: str = "[]"
    priority: int = 2
    workflow_json: str
    # The submitted form fields: [{"field", "value", "is_file", "object"?, "filename"?}].
    inputs_json: str = "[]"
    # [[placeholder, value], ...] of the current execution.
    params_json: str = "[]"
    prompt_json: str = ""
    runner_id: str | None = None
    attempt: int = 0
    prompt_id: str = ""
    queue_number: int | None = None
    failure_json: str = ""
    node_errors_json: str = "[]"
    cancel_requested: bool = False
    last_seq: int = 0
    last_runner_seq: int = 0
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    completed_at: datetime | None = None


class EventRow(SQLModel, table=True):
    """One entry of a workflow's event log: the serialized comfyfleet.scheduler.v1.WorkflowEvent."""

    __tablename__ = "workflow_events"
    workflow_id: str = Field(primary_key=True, foreign_key="workflows.id")
    seq: int = Field(primary_key=True)
    payload: bytes
    created_at: datetime


class OutputRow(SQLModel, table=True):
    __tablename__ = "outputs"
    id: str = Field(primary_key=True)
    workflow_id: str = Field(foreign_key="workflows.id", index=True)
    node_id: str
    filename: str
    object_key: str
    size_bytes: int
    sha256: str
    content_type: str
    created_at: datetime
