"""What users do with webhooks: register, read, page and delete endpoints; read delivery logs
and redeliver; read the secret of their workflows' own webhook_url; give a workflow a URL.

A secret is made here, sealed (sealing.py) and stored; only CreateWebhook's response shows
an endpoint's secret. Deliveries to a workflow's webhook_url are signed with the user's
"workflow webhook secret" (one per user, made on first use, read with GetWorkflowWebhookSecret).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable

from comfyfleet.scheduler.v1 import webhook_pb2, webhook_service_pb2

from services.scheduler.db.models import UserRow, WebhookEndpointRow, WebhookUserSecretRow, WorkflowWebhookRow
from services.scheduler.errors import InvalidArgument, PermissionDenied, Unavailable
from services.scheduler.records import ts, utcnow
from services.scheduler.runners import page_args
from services.scheduler.webhooks import events, signing
from services.scheduler.webhooks.dispatcher import Dispatcher
from services.scheduler.webhooks.errors import WebhooksDisabled
from services.scheduler.webhooks.sealing import SecretBox
from services.scheduler.webhooks.sender import check_target
from services.scheduler.webhooks.store import Delivery, WebhookStore
from services.scheduler.webhooks.targets import TargetPolicy

MAX_DESCRIPTION = 500
UPDATABLE = ("url", "events", "description")  # an endpoint's fields UpdateWebhook may change
# Endpoints per user: every event is sent to each matching one, so this bounds the fan-out.
MAX_ENDPOINTS = 20
STATE_TO_PB = {"pending": webhook_pb2.WEBHOOK_DELIVERY_STATE_PENDING,
               "succeeded": webhook_pb2.WEBHOOK_DELIVERY_STATE_SUCCEEDED,
               "failed": webhook_pb2.WEBHOOK_DELIVERY_STATE_FAILED}


def endpoint_pb(row: WebhookEndpointRow) -> webhook_pb2.WebhookEndpoint:
    endpoint = webhook_pb2.WebhookEndpoint(id=row.id, user_id=row.user_id, url=row.url,
                                           events=json.loads(row.events_json), description=row.description)
    for name in ("created_at", "updated_at"):
        if (value := ts(getattr(row, name))) is not None:
            getattr(endpoint, name).CopyFrom(value)
    return endpoint


def delivery_pb(delivery: Delivery) -> webhook_pb2.WebhookDelivery:
    row = delivery.row
    message = webhook_pb2.WebhookDelivery(id=row.id, webhook_id=row.endpoint_id, workflow_id=row.workflow_id,
                                          event_seq=row.event_seq, event_type=row.event_type, url=row.url,
                                          state=STATE_TO_PB[row.state])
    for name in ("next_attempt_at", "created_at"):
        if (value := ts(getattr(row, name))) is not None:
            getattr(message, name).CopyFrom(value)
    for attempt in delivery.attempts:
        item = message.attempts.add(status_code=attempt.status_code, error=attempt.error,
                                    duration_ms=attempt.duration_ms)
        if (at := ts(attempt.attempted_at)) is not None:
            item.attempted_at.CopyFrom(at)
    return message


class Webhooks:
    def __init__(self, store: WebhookStore, box: SecretBox | None, policy: TargetPolicy,
                 dispatcher: Dispatcher | None, *, wake_worker: Callable[[], None],
                 workflow_exists: Callable[[UserRow, str], Awaitable[object]]) -> None:
        self.store = store
        self.box = box
        self.policy = policy
        self.dispatcher = dispatcher
        self.wake_worker = wake_worker
        self.workflow_exists = workflow_exists

    def _sealer(self) -> SecretBox:
        if self.box is None:
            raise WebhooksDisabled()
        return self.box

    async def create(self, user: UserRow, req: webhook_service_pb2.CreateWebhookRequest
                     ) -> tuple[webhook_pb2.WebhookEndpoint, str]:
        box = self._sealer()
        url = req.url.strip()
        filters = events.parse_filters(list(req.events))
        description = _description(req.description)
        await check_target(self.policy, url)
        if (await self.store.endpoints_page(user.id, 1, 1))[1] >= MAX_ENDPOINTS:
            raise PermissionDenied(f"at most {MAX_ENDPOINTS} webhooks per user: delete one first",
                                   reason="WEBHOOK_LIMIT_EXCEEDED", details=[{"limit": MAX_ENDPOINTS}])
        secret, endpoint_id, now = signing.new_secret(), str(uuid.uuid4()), utcnow()
        row = WebhookEndpointRow(id=endpoint_id, user_id=user.id, url=url, events_json=json.dumps(filters),
                                 description=description, secret_sealed=box.seal(secret, endpoint_id),
                                 created_at=now, updated_at=now)
        await self.store.create_endpoint(row)
        if self.dispatcher is not None:
            self.dispatcher.tail(user.id)
        return endpoint_pb(row), secret

    async def get(self, user: UserRow, endpoint_id: str) -> webhook_pb2.WebhookEndpoint:
        return endpoint_pb(await self.store.endpoint(endpoint_id, user.id))

    async def list_page(self, user: UserRow, req: webhook_service_pb2.ListWebhooksRequest
                        ) -> tuple[list[webhook_pb2.WebhookEndpoint], int]:
        page, per_page = page_args(req.page, req.per_page)
        rows, total = await self.store.endpoints_page(user.id, page, per_page)
        return [endpoint_pb(r) for r in rows], total

    async def update(self, user: UserRow, req: webhook_service_pb2.UpdateWebhookRequest
                     ) -> webhook_pb2.WebhookEndpoint:
        """Changes the fields in `update_mask`, each checked as `create` checks it; the secret
        stays. A new url also takes the endpoint's pending deliveries (store.update_endpoint)."""
        paths = list(dict.fromkeys(req.update_mask.paths))
        if unknown := [p for p in paths if p not in UPDATABLE]:
            raise InvalidArgument(f"cannot update {', '.join(unknown)}: only {', '.join(UPDATABLE)}",
                                  reason="UNKNOWN_FIELD", details=[{"field": p} for p in unknown])
        if not paths:
            return await self.get(user, req.id)
        new = req.webhook
        values: dict[str, str] = {}
        if "events" in paths:
            values["events_json"] = json.dumps(events.parse_filters(list(new.events)))
        if "description" in paths:
            values["description"] = _description(new.description)
        if "url" in paths:
            await self.store.endpoint(req.id, user.id)  # 404 before the url is resolved
            values["url"] = new.url.strip()
            await check_target(self.policy, values["url"])
        return endpoint_pb(await self.store.update_endpoint(req.id, user.id, values, utcnow()))

    async def delete(self, user: UserRow, endpoint_id: str) -> None:
        await self.store.delete_endpoint(endpoint_id, user.id, utcnow())

    async def deliveries(self, user: UserRow, req: webhook_service_pb2.ListWebhookDeliveriesRequest
                         ) -> tuple[list[webhook_pb2.WebhookDelivery], int]:
        page, per_page = page_args(req.page, req.per_page)
        await self.store.endpoint(req.id, user.id)  # 404 unless the caller's
        found, total = await self.store.deliveries_page(user.id, endpoint_id=req.id, page=page, per_page=per_page)
        return [delivery_pb(d) for d in found], total

    async def redeliver(self, user: UserRow, req: webhook_service_pb2.RedeliverWebhookDeliveryRequest
                        ) -> webhook_pb2.WebhookDelivery:
        await self.store.endpoint(req.id, user.id)
        delivery = await self.store.redeliver(req.delivery_id, user.id, req.id, utcnow())
        self.wake_worker()
        return delivery_pb(delivery)

    def _new_user_secret(self, user: UserRow) -> Callable[[], WebhookUserSecretRow]:
        box = self._sealer()
        return lambda: WebhookUserSecretRow(user_id=user.id, secret_sealed=box.seal(signing.new_secret(), user.id),
                                            created_at=utcnow())

    async def workflow_secret(self, user: UserRow) -> str:
        make = self._new_user_secret(user)
        row = await self.store.user_secret(user.id, make)
        try:
            return self._sealer().open(row.secret_sealed, user.id)
        except ValueError:
            raise Unavailable("the webhook secret cannot be read with this server's webhook key",
                              reason="WEBHOOK_KEY_MISMATCH") from None

    async def workflow_deliveries(self, user: UserRow, req: webhook_service_pb2.ListWorkflowWebhookDeliveriesRequest
                                  ) -> tuple[list[webhook_pb2.WebhookDelivery], int]:
        page, per_page = page_args(req.page, req.per_page)
        await self.workflow_exists(user, req.id)
        found, total = await self.store.deliveries_page(user.id, workflow_id=req.id, page=page, per_page=per_page)
        return [delivery_pb(d) for d in found], total

    async def give_workflow_url(self, user: UserRow, workflow_id: str, raw_url: str) -> None:
        """Records a new workflow's webhook_url (checked like an endpoint's) before it is created."""
        make_secret = self._new_user_secret(user)  # (409 first when webhooks are off)
        url = raw_url.strip()
        await check_target(self.policy, url, "webhook_url")
        await self.store.put_workflow_url(WorkflowWebhookRow(workflow_id=workflow_id, user_id=user.id, url=url,
                                                             created_at=utcnow()), make_secret)
        if self.dispatcher is not None:
            self.dispatcher.tail(user.id)

    async def forget_workflow_url(self, workflow_id: str) -> None:
        await self.store.drop_workflow_url(workflow_id)


def _description(text: str) -> str:
    description = text.strip()
    if len(description) > MAX_DESCRIPTION:
        raise InvalidArgument(f"description must be at most {MAX_DESCRIPTION} characters",
                              reason="INVALID_FIELD", details=[{"field": "description"}])
    return description
