"""Tables. JSON columns hold small structured values (tags, params, failure, node errors).

Every datetime column is a `UTCDateTime` (set at the bottom of this module, for every table
in the metadata): TIMESTAMP WITH TIME ZONE on Postgres, SQLite's DATETIME text as before.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import BigInteger, DateTime, TypeDecorator
from sqlalchemy.engine import Dialect
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
    # What it is for, to tell tokens apart when listing or revoking.
    name: str = ""
    created_at: datetime
    expires_at: datetime | None = None
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None


class RunnerRow(SQLModel, table=True):
    __tablename__ = "runners"
    id: str = Field(primary_key=True)
    user_id: str = Field(foreign_key="users.id", index=True)
    name: str
    status: str = "active"  # active | disabled
    # Registered through the API: its ComfyUI's URL and the headers to send (in clear: the
    # runner pool needs them; responses mask the values). Empty for self-registered agents.
    endpoint: str = ""
    headers_json: str = "{}"
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

    def __setattr__(self, name: str, value: Any) -> None:
        """A row no session loaded or holds (the ones db/changes.workflow_row makes, for every
        change and create) gets a column set plainly in its __dict__, where SQLAlchemy keeps
        it too: SQLModel's way (pydantic's checks, then the ORM's change tracking) cost ~14 us
        a set, for rows no session ever flushes. A row a session loaded is set as usual."""
        state = self.__dict__.get("_sa_instance_state")
        if state is not None and state.key is None and state.session_id is None and name in _WORKFLOW_FIELDS:
            self.__dict__[name] = value
        else:
            super().__setattr__(name, value)


_WORKFLOW_FIELDS = frozenset(WorkflowRow.model_fields)


class EventRow(SQLModel, table=True):
    """One entry of a workflow's event log: the serialized comfyfleet.scheduler.v1.WorkflowEvent."""

    __tablename__ = "workflow_events"
    workflow_id: str = Field(primary_key=True, foreign_key="workflows.id")
    seq: int = Field(primary_key=True)
    payload: bytes
    created_at: datetime
    # The owner and the per-user number (services.scheduler.db.event_numbers; migration 8
    # indexes (user_id, user_seq), unique).
    user_id: str = ""
    user_seq: int = Field(default=0, sa_type=BigInteger)


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


class TemplateRow(SQLModel, table=True):
    """A reusable graph with placeholders, private to its owner."""

    __tablename__ = "templates"
    __table_args__ = (Index("ix_templates_user_created", "user_id", "created_at"),)
    id: str = Field(primary_key=True)
    user_id: str = Field(foreign_key="users.id")
    name: str
    description: str
    body: str
    created_at: datetime
    updated_at: datetime


class IdempotencyRow(SQLModel, table=True):
    """A create that carried an Idempotency-Key: what was asked (a digest) and what was answered."""

    __tablename__ = "idempotency_keys"
    user_id: str = Field(primary_key=True, foreign_key="users.id")
    key: str = Field(primary_key=True)
    # sha256 of the canonical request (services.scheduler.idempotency.fingerprint).
    fingerprint: str
    workflow_id: str
    # The serialized comfyfleet.scheduler.v1.Workflow as first answered.
    response: bytes
    created_at: datetime


class WebhookEndpointRow(SQLModel, table=True):
    """A user's webhook endpoint (services.scheduler.webhooks); its secret only encrypted."""

    __tablename__ = "webhook_endpoints"
    __table_args__ = (Index("ix_webhook_endpoints_user_created", "user_id", "created_at"),)
    id: str = Field(primary_key=True)
    user_id: str = Field(foreign_key="users.id")
    url: str
    events_json: str = '["*"]'
    description: str = ""
    # The "whsec_..." secret sealed with the operator's webhook key (webhooks/secrets.py).
    secret_sealed: str
    created_at: datetime
    updated_at: datetime


class WebhookUserSecretRow(SQLModel, table=True):
    """The secret that signs deliveries to a user's workflows' own webhook_url, sealed."""

    __tablename__ = "webhook_user_secrets"
    user_id: str = Field(primary_key=True, foreign_key="users.id")
    secret_sealed: str
    created_at: datetime


class WorkflowWebhookRow(SQLModel, table=True):
    """The webhook_url a workflow was created with (no foreign key: written before the workflow)."""

    __tablename__ = "workflow_webhooks"
    workflow_id: str = Field(primary_key=True)
    user_id: str
    url: str
    created_at: datetime


class WebhookCursorRow(SQLModel, table=True):
    """How far the webhook dispatcher got in a user's events (workflow_events.user_seq)."""

    __tablename__ = "webhook_cursors"
    user_id: str = Field(primary_key=True)
    last_user_seq: int = Field(default=0, sa_type=BigInteger)


class WebhookDeliveryRow(SQLModel, table=True):
    """One event for one target; `id` is the webhook-id header, the same on every attempt."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_webhook_deliveries_due", "state", "next_attempt_at"),
        Index("ix_webhook_deliveries_endpoint", "endpoint_id", "created_at"),
        Index("ix_webhook_deliveries_workflow", "workflow_id", "created_at"),
        Index("ux_webhook_deliveries_event", "endpoint_id", "workflow_id", "event_seq", unique=True),
    )
    id: str = Field(primary_key=True)
    user_id: str
    # The registered endpoint, or "" for the workflow's own webhook_url.
    endpoint_id: str = ""
    workflow_id: str
    event_seq: int = Field(sa_type=BigInteger)
    event_type: str
    url: str
    # The JSON body, fixed when the delivery is made (signatures cover it).
    payload: str
    state: str = "pending"  # pending | succeeded | failed
    # Failed attempts since the delivery (or its last redelivery) started, and when that was.
    failures: int = 0
    window_start: datetime
    next_attempt_at: datetime | None = None
    created_at: datetime
    updated_at: datetime


class WebhookAttemptRow(SQLModel, table=True):
    """One HTTP request of a delivery."""

    __tablename__ = "webhook_attempts"
    delivery_id: str = Field(primary_key=True)
    number: int = Field(primary_key=True)
    attempted_at: datetime
    status_code: int = 0
    error: str = ""
    duration_ms: int = 0


class UTCDateTime(TypeDecorator[datetime]):
    """A point in time, kept in UTC: TIMESTAMP WITH TIME ZONE on Postgres (asyncpg refuses an
    aware datetime for a naive `timestamp` column, and the code hands out aware ones).

    Written: on Postgres (any dialect but SQLite) a naive value is taken to be UTC and an aware
    one is converted to UTC. On SQLite the value goes through untouched and is stored as naive
    DATETIME text of its own clock reading: an offset is dropped, not applied, so hand it UTC.
    Read: as the driver gives it, aware in UTC from Postgres, naive from SQLite (the readers
    attach UTC, e.g. identity_store._aware).
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None or dialect.name == "sqlite":
            return value
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        return value  # type: ignore[no-any-return]


# SQLModel maps `datetime` to a naive DateTime and has no hook for another type: every table
# defined above (and any added later in this module) gets UTCDateTime instead.
for _table in SQLModel.metadata.tables.values():
    for _column in _table.columns:
        if isinstance(_column.type, DateTime) and not isinstance(_column.type, UTCDateTime):
            _column.type = UTCDateTime()
