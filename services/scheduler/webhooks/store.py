"""The webhook tables (db/models.py webhook_*): endpoints, secrets, workflow URLs, cursors,
deliveries and their attempts. Every method is one transaction; writers hold `write_lock`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import Table, and_, bindparam, delete, func, insert, select, text, update
from sqlalchemy.engine import Connection

from services.scheduler.db.engine import Database, runs_to_completion
from services.scheduler.db.event_numbers import last_number
from services.scheduler.db.models import (
    EventRow,
    WebhookAttemptRow,
    WebhookCursorRow,
    WebhookDeliveryRow,
    WebhookEndpointRow,
    WebhookUserSecretRow,
    WorkflowWebhookRow,
)
from services.scheduler.webhooks.errors import DeliveryNotFound, WebhookNotFound

T = TypeVar("T")
_ENDPOINTS: Table = WebhookEndpointRow.__table__  # type: ignore[attr-defined]
_SECRETS: Table = WebhookUserSecretRow.__table__  # type: ignore[attr-defined]
_WORKFLOW_URLS: Table = WorkflowWebhookRow.__table__  # type: ignore[attr-defined]
_CURSORS: Table = WebhookCursorRow.__table__  # type: ignore[attr-defined]
_DELIVERIES: Table = WebhookDeliveryRow.__table__  # type: ignore[attr-defined]
_ATTEMPTS: Table = WebhookAttemptRow.__table__  # type: ignore[attr-defined]
_EVENTS: Table = EventRow.__table__  # type: ignore[attr-defined]

PENDING, SUCCEEDED, FAILED = "pending", "succeeded", "failed"


def aware(value: datetime | None) -> datetime | None:
    """SQLite hands back naive UTC datetimes; Postgres aware ones."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


@dataclass(frozen=True)
class Delivery:
    row: WebhookDeliveryRow
    attempts: list[WebhookAttemptRow]  # newest first


@dataclass(frozen=True)
class Outcome:
    """What one attempt did, and what the delivery becomes."""

    attempt: WebhookAttemptRow
    state: str
    failures: int
    next_attempt_at: datetime | None


def _row(model: type[T], mapping: Any) -> T:
    return model(**dict(mapping))


class WebhookStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def _read(self, work: Callable[[Connection], T]) -> T:
        """A read on a pooled connection of the async engine: never on the thread that runs the
        scheduler's write transactions (Database.transaction), so webhooks do not queue there."""
        async with self.db.engine.connect() as conn:
            return await conn.run_sync(work)

    async def _write(self, work: Callable[[Connection], T]) -> T:
        async with self.db.write_lock:
            return await self.db.transaction(work)

    # Endpoints -----------------------------------------------------------------------------

    @runs_to_completion
    async def create_endpoint(self, row: WebhookEndpointRow) -> WebhookEndpointRow:
        def work(conn: Connection) -> None:
            conn.execute(insert(_ENDPOINTS), [row.model_dump()])
            _ensure_cursor(conn, row.user_id)

        await self._write(work)
        return row

    @runs_to_completion
    async def endpoint(self, endpoint_id: str, user_id: str) -> WebhookEndpointRow:
        def read(conn: Connection) -> WebhookEndpointRow:
            found = conn.execute(select(_ENDPOINTS).where(_ENDPOINTS.c.id == endpoint_id)).mappings().first()
            if found is None or found["user_id"] != user_id:
                raise WebhookNotFound(endpoint_id)
            return _row(WebhookEndpointRow, found)

        return await self._read(read)

    @runs_to_completion
    async def endpoints_page(self, user_id: str, page: int, per_page: int) -> tuple[list[WebhookEndpointRow], int]:
        def read(conn: Connection) -> tuple[list[WebhookEndpointRow], int]:
            mine = _ENDPOINTS.c.user_id == user_id
            total = conn.execute(select(func.count()).select_from(_ENDPOINTS).where(mine)).scalar_one()
            rows = conn.execute(select(_ENDPOINTS).where(mine)
                                .order_by(_ENDPOINTS.c.created_at.desc(), _ENDPOINTS.c.id.desc())
                                .offset((page - 1) * per_page).limit(per_page)).mappings().all()
            return [_row(WebhookEndpointRow, r) for r in rows], int(total)

        return await self._read(read)

    @runs_to_completion
    async def update_endpoint(self, endpoint_id: str, user_id: str, values: dict[str, Any],
                              now: datetime) -> WebhookEndpointRow:
        """Sets `values` (columns) on the endpoint; with a new `url`, its pending deliveries
        go there (sent ones keep the url they were sent to)."""
        def work(conn: Connection) -> WebhookEndpointRow:
            mine = and_(_ENDPOINTS.c.id == endpoint_id, _ENDPOINTS.c.user_id == user_id)
            if not conn.execute(update(_ENDPOINTS).where(mine).values(**values, updated_at=now)).rowcount:
                raise WebhookNotFound(endpoint_id)
            if "url" in values:
                conn.execute(update(_DELIVERIES).where(_DELIVERIES.c.endpoint_id == endpoint_id,
                                                       _DELIVERIES.c.state == PENDING)
                             .values(url=values["url"], updated_at=now))
            return _row(WebhookEndpointRow, conn.execute(select(_ENDPOINTS).where(mine)).mappings().one())

        return await self._write(work)

    @runs_to_completion
    async def delete_endpoint(self, endpoint_id: str, user_id: str, now: datetime) -> None:
        """Removes the endpoint; its pending deliveries end as failed (the log stays)."""
        def work(conn: Connection) -> None:
            gone = conn.execute(delete(_ENDPOINTS).where(_ENDPOINTS.c.id == endpoint_id,
                                                         _ENDPOINTS.c.user_id == user_id)).rowcount
            if not gone:
                raise WebhookNotFound(endpoint_id)
            conn.execute(update(_DELIVERIES).where(_DELIVERIES.c.endpoint_id == endpoint_id,
                                                   _DELIVERIES.c.state == PENDING)
                         .values(state=FAILED, next_attempt_at=None, updated_at=now))

        await self._write(work)

    # Secrets and workflow URLs ---------------------------------------------------------------

    @runs_to_completion
    async def user_secret(self, user_id: str, make: Callable[[], WebhookUserSecretRow]) -> WebhookUserSecretRow:
        """The user's workflow-webhook secret row, made with `make` on first use."""
        async with self.db.sessions() as s:  # read first: the write lock only on first use
            found = await s.get(WebhookUserSecretRow, user_id)
        if found is not None:
            return found
        return await self._write(lambda conn: _ensure_secret(conn, user_id, make))

    @runs_to_completion
    async def put_workflow_url(self, row: WorkflowWebhookRow, make_secret: Callable[[], WebhookUserSecretRow]) -> None:
        """Records a workflow's webhook_url; the user's secret is made too if it is their first."""
        def work(conn: Connection) -> None:
            conn.execute(delete(_WORKFLOW_URLS).where(_WORKFLOW_URLS.c.workflow_id == row.workflow_id))
            conn.execute(insert(_WORKFLOW_URLS), [row.model_dump()])
            _ensure_cursor(conn, row.user_id)
            _ensure_secret(conn, row.user_id, make_secret)

        await self._write(work)

    @runs_to_completion
    async def drop_workflow_url(self, workflow_id: str) -> None:
        await self._write(lambda conn: conn.execute(
            delete(_WORKFLOW_URLS).where(_WORKFLOW_URLS.c.workflow_id == workflow_id)))

    # Dispatcher ------------------------------------------------------------------------------

    @runs_to_completion
    async def cursors(self) -> dict[str, int]:
        def read(conn: Connection) -> dict[str, int]:
            return {r.user_id: int(r.last_user_seq) for r in conn.execute(select(_CURSORS))}

        return await self._read(read)

    @runs_to_completion
    async def batch_after(self, user_id: str, limit: int
                          ) -> tuple[int, list[tuple[int, bytes]], list[WebhookEndpointRow], dict[str, str]] | None:
        """In one read: the user's cursor, their next `limit` events after it, their endpoints and
        the webhook_url of the workflows among those events; None when the user has no cursor."""
        def read(conn: Connection) -> tuple[int, list[tuple[int, bytes]], list[WebhookEndpointRow],
                                            dict[str, str]] | None:
            after = conn.execute(select(_CURSORS.c.last_user_seq).where(_CURSORS.c.user_id == user_id)).scalar()
            if after is None:
                return None
            rows = [(int(r.user_seq), bytes(r.payload)) for r in conn.execute(
                select(_EVENTS.c.user_seq, _EVENTS.c.payload, _EVENTS.c.workflow_id)
                .where(_EVENTS.c.user_id == user_id, _EVENTS.c.user_seq > after)
                .order_by(_EVENTS.c.user_seq).limit(limit))]
            if not rows:
                return int(after), [], [], {}
            endpoints = [_row(WebhookEndpointRow, r) for r in
                         conn.execute(select(_ENDPOINTS).where(_ENDPOINTS.c.user_id == user_id)).mappings()]
            urls = {r.workflow_id: r.url for r in conn.execute(
                select(_WORKFLOW_URLS.c.workflow_id, _WORKFLOW_URLS.c.url).where(_WORKFLOW_URLS.c.user_id == user_id))}
            return int(after), rows, endpoints, urls

        return await self._read(read)

    @runs_to_completion
    async def workflow_urls(self, workflow_ids: Sequence[str]) -> dict[str, str]:
        def read(conn: Connection) -> dict[str, str]:
            rows = conn.execute(select(_WORKFLOW_URLS.c.workflow_id, _WORKFLOW_URLS.c.url)
                                .where(_WORKFLOW_URLS.c.workflow_id.in_(list(workflow_ids))))
            return {r.workflow_id: r.url for r in rows}

        return await self._read(read) if workflow_ids else {}

    @runs_to_completion
    async def commit_batch(self, user_id: str, after: int, upto: int, deliveries: list[WebhookDeliveryRow],
                           finished: Sequence[str] = ()) -> bool:
        """The deliveries of the user's events (after, upto] and the cursor moved to `upto`, in one
        transaction; the webhook_url of `finished` workflows (their terminal event is in this
        batch) is no longer needed. False (and nothing written) when the cursor is not at `after`."""
        def work(conn: Connection) -> bool:
            moved = conn.execute(update(_CURSORS).where(_CURSORS.c.user_id == user_id,
                                                        _CURSORS.c.last_user_seq == after)
                                 .values(last_user_seq=upto)).rowcount
            if not moved:
                return False
            if deliveries:
                conn.execute(insert(_DELIVERIES), [d.model_dump() for d in deliveries])
            if finished:
                conn.execute(delete(_WORKFLOW_URLS).where(_WORKFLOW_URLS.c.workflow_id.in_(list(finished))))
            return True

        return await self._write(work)

    @runs_to_completion
    async def untail_if_idle(self, user_id: str) -> bool:
        """Drops the user's cursor when nothing of theirs needs tailing (no endpoint, no
        unfinished workflow with a webhook_url); True when dropped."""
        def work(conn: Connection) -> bool:
            for table in (_ENDPOINTS, _WORKFLOW_URLS):
                if conn.execute(select(table.c.user_id).where(table.c.user_id == user_id).limit(1)).first():
                    return False
            conn.execute(delete(_CURSORS).where(_CURSORS.c.user_id == user_id))
            return True

        return await self._write(work)

    # Worker ----------------------------------------------------------------------------------

    @runs_to_completion
    async def due(self, now: datetime, limit: int, skip: Sequence[str]) -> list[WebhookDeliveryRow]:
        def read(conn: Connection) -> list[WebhookDeliveryRow]:
            query = (select(_DELIVERIES).where(_DELIVERIES.c.state == PENDING, _DELIVERIES.c.next_attempt_at <= now)
                     .order_by(_DELIVERIES.c.next_attempt_at).limit(limit))
            if skip:
                query = query.where(_DELIVERIES.c.id.not_in(list(skip)))
            return [_row(WebhookDeliveryRow, r) for r in conn.execute(query).mappings()]

        return await self._read(read)

    @runs_to_completion
    async def next_due(self, skip: Sequence[str] = ()) -> datetime | None:
        def read(conn: Connection) -> datetime | None:
            query = select(func.min(_DELIVERIES.c.next_attempt_at)).where(_DELIVERIES.c.state == PENDING)
            if skip:
                query = query.where(_DELIVERIES.c.id.not_in(list(skip)))
            return conn.execute(query).scalar()

        return aware(await self._read(read))

    @runs_to_completion
    async def signing_secret(self, delivery: WebhookDeliveryRow) -> tuple[str, str] | None:
        """(sealed secret, the id it is sealed under) of the delivery's target; None when gone."""
        def read(conn: Connection) -> tuple[str, str] | None:
            if delivery.endpoint_id:
                found = conn.execute(select(_ENDPOINTS.c.secret_sealed)
                                     .where(_ENDPOINTS.c.id == delivery.endpoint_id)).scalar()
                return (found, delivery.endpoint_id) if found is not None else None
            found = conn.execute(select(_SECRETS.c.secret_sealed)
                                 .where(_SECRETS.c.user_id == delivery.user_id)).scalar()
            return (found, delivery.user_id) if found is not None else None

        return await self._read(read)

    @runs_to_completion
    async def record(self, delivery_id: str, outcome: Outcome, now: datetime) -> None:
        """One attempt and the delivery's new state, together."""
        def work(conn: Connection) -> None:
            number = conn.execute(select(func.count()).select_from(_ATTEMPTS)
                                  .where(_ATTEMPTS.c.delivery_id == delivery_id)).scalar_one()
            attempt = outcome.attempt.model_dump()
            conn.execute(insert(_ATTEMPTS), [{**attempt, "delivery_id": delivery_id, "number": int(number) + 1}])
            conn.execute(update(_DELIVERIES).where(_DELIVERIES.c.id == delivery_id, _DELIVERIES.c.state == PENDING)
                         .values(state=outcome.state, failures=outcome.failures,
                                 next_attempt_at=outcome.next_attempt_at, updated_at=now))

        await self._write(work)

    @runs_to_completion
    async def forget_before(self, cutoff: datetime) -> int:
        """Deletes finished deliveries (and their attempts) last changed before `cutoff`."""
        def work(conn: Connection) -> int:
            old = select(_DELIVERIES.c.id).where(_DELIVERIES.c.state != PENDING, _DELIVERIES.c.updated_at < cutoff)
            conn.execute(delete(_ATTEMPTS).where(_ATTEMPTS.c.delivery_id.in_(old)))
            return int(conn.execute(delete(_DELIVERIES).where(_DELIVERIES.c.state != PENDING,
                                                              _DELIVERIES.c.updated_at < cutoff)).rowcount)

        return await self._write(work)

    # Logs ------------------------------------------------------------------------------------

    @runs_to_completion
    async def deliveries_page(self, user_id: str, *, endpoint_id: str = "", workflow_id: str = "",
                              page: int, per_page: int) -> tuple[list[Delivery], int]:
        def read(conn: Connection) -> tuple[list[Delivery], int]:
            where = and_(_DELIVERIES.c.user_id == user_id, _DELIVERIES.c.endpoint_id == endpoint_id,
                         *([_DELIVERIES.c.workflow_id == workflow_id] if workflow_id else []))
            total = conn.execute(select(func.count()).select_from(_DELIVERIES).where(where)).scalar_one()
            rows = [_row(WebhookDeliveryRow, r) for r in conn.execute(
                select(_DELIVERIES).where(where)
                .order_by(_DELIVERIES.c.created_at.desc(), _DELIVERIES.c.event_seq.desc(), _DELIVERIES.c.id.desc())
                .offset((page - 1) * per_page).limit(per_page)).mappings()]
            return [Delivery(row, _attempts(conn, row.id)) for row in rows], int(total)

        return await self._read(read)

    @runs_to_completion
    async def redeliver(self, delivery_id: str, user_id: str, endpoint_id: str, now: datetime) -> Delivery:
        """Pending again, due now, with a fresh retry window; attempts so far stay in the log."""
        def work(conn: Connection) -> Delivery:
            found = conn.execute(select(_DELIVERIES).where(_DELIVERIES.c.id == delivery_id)).mappings().first()
            if found is None or found["user_id"] != user_id or found["endpoint_id"] != endpoint_id:
                raise DeliveryNotFound(delivery_id)
            changes = {"state": PENDING, "failures": 0, "window_start": now, "next_attempt_at": now, "updated_at": now}
            conn.execute(update(_DELIVERIES).where(_DELIVERIES.c.id == delivery_id).values(changes))
            row = _row(WebhookDeliveryRow, {**found, **changes})
            return Delivery(row, _attempts(conn, delivery_id))

        return await self._write(work)


def _attempts(conn: Connection, delivery_id: str) -> list[WebhookAttemptRow]:
    return [_row(WebhookAttemptRow, r) for r in conn.execute(
        select(_ATTEMPTS).where(_ATTEMPTS.c.delivery_id == delivery_id).order_by(_ATTEMPTS.c.number.desc())
    ).mappings()]


_NEW_CURSOR = text("INSERT INTO webhook_cursors (user_id, last_user_seq) VALUES (:user_id, :last) "
                   "ON CONFLICT (user_id) DO NOTHING")
_NEW_SECRET = text("INSERT INTO webhook_user_secrets (user_id, secret_sealed, created_at) "
                   "VALUES (:user_id, :secret_sealed, :created_at) ON CONFLICT (user_id) DO NOTHING")


def _ensure_secret(conn: Connection, user_id: str, make: Callable[[], WebhookUserSecretRow]) -> WebhookUserSecretRow:
    found = conn.execute(select(_SECRETS).where(_SECRETS.c.user_id == user_id)).mappings().first()
    if found is not None:
        return _row(WebhookUserSecretRow, found)
    conn.execute(_NEW_SECRET.bindparams(bindparam("created_at", type_=_SECRETS.c.created_at.type)),
                 make().model_dump())  # (a concurrent first use may win: read what is there)
    return _row(WebhookUserSecretRow, conn.execute(
        select(_SECRETS).where(_SECRETS.c.user_id == user_id)).mappings().one())


def _ensure_cursor(conn: Connection, user_id: str) -> None:
    """A user tailed from now on: their cursor starts at their last event (no backfill)."""
    if conn.execute(select(_CURSORS.c.user_id).where(_CURSORS.c.user_id == user_id)).first() is None:
        conn.execute(_NEW_CURSOR, {"user_id": user_id, "last": last_number(conn, user_id)})
