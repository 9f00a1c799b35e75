"""The /v1/webhook routes (JSON): register (201 with the secret, shown once), list, read,
update, delete, the delivery log and redeliver; /v1/webhook-secret (the secret of workflows' own
webhook_url deliveries) and /v1/workflow/{id}/webhook-deliveries. The scheduler checks
targets, filters and ownership (another user's ids are 404)."""

from __future__ import annotations

from typing import Any

from comfyfleet.scheduler.v1 import webhook_pb2
from comfyfleet.scheduler.v1 import webhook_service_pb2 as pb
from google.protobuf import timestamp_pb2
from google.protobuf.field_mask_pb2 import FieldMask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from services.gateway import json_body
from services.gateway.context import bearer, gateway
from services.gateway.presenters import rfc3339
from services.gateway.workflow_form import invalid_field
from services.gateway.workflow_routes import DEFAULT_PER_PAGE, MAX_PER_PAGE, int_param

_INT32_MAX = 2**31 - 1
FIELDS = ("url", "events", "description")
Json = dict[str, Any]
STATE_NAMES = {webhook_pb2.WEBHOOK_DELIVERY_STATE_PENDING: "pending",
               webhook_pb2.WEBHOOK_DELIVERY_STATE_SUCCEEDED: "succeeded",
               webhook_pb2.WEBHOOK_DELIVERY_STATE_FAILED: "failed"}


def _time(message: Any, name: str) -> str | None:
    value: timestamp_pb2.Timestamp = getattr(message, name)
    return rfc3339(value) if message.HasField(name) else None


def endpoint_json(w: webhook_pb2.WebhookEndpoint) -> Json:
    shown: Json = {"id": w.id, "user_id": w.user_id, "url": w.url, "events": list(w.events),
                   "description": w.description, "created_at": _time(w, "created_at"),
                   "updated_at": _time(w, "updated_at")}
    if w.secret:
        shown["secret"] = w.secret
    return shown


def delivery_json(d: webhook_pb2.WebhookDelivery) -> Json:
    return {
        "id": d.id, "webhook_id": d.webhook_id or None, "workflow_id": d.workflow_id, "event_seq": d.event_seq,
        "event_type": d.event_type, "url": d.url, "state": STATE_NAMES.get(d.state, "pending"),
        "attempts": [{"attempted_at": _time(a, "attempted_at"), "status_code": a.status_code,
                      "error": a.error or None, "duration_ms": a.duration_ms} for a in d.attempts],
        "next_attempt_at": _time(d, "next_attempt_at"), "created_at": _time(d, "created_at"),
    }


def _page(request: Request) -> tuple[int, int]:
    query = request.query_params
    return (int_param(query.get("page"), "page", default=1, maximum=_INT32_MAX),
            int_param(query.get("per_page"), "per_page", default=DEFAULT_PER_PAGE, maximum=MAX_PER_PAGE))


async def create_webhook(request: Request) -> Response:
    """POST /v1/webhook {url, events?, description?}: 201 with the endpoint and its secret."""
    gw, auth = gateway(request), bearer(request)
    await gw.scheduler.get_user(auth)
    body = await json_body.read_object(request, FIELDS)
    if "url" not in body:
        raise invalid_field("url", "missing required field 'url'", reason="MISSING_FIELD")
    create = pb.CreateWebhookRequest(url=json_body.text(body, "url"))
    if "events" in body:
        create.events.extend(json_body.text_list(body, "events"))
    if "description" in body:
        create.description = json_body.text(body, "description")
    reply = await gw.scheduler.webhooks(auth, "CreateWebhook", create)
    return JSONResponse(endpoint_json(reply.webhook), status_code=201,
                        headers={"Location": f"/v1/webhook/{reply.webhook.id}"})


async def list_webhooks(request: Request) -> Response:
    """GET /v1/webhook?page=&per_page=: newest first, without secrets."""
    page, per_page = _page(request)
    reply = await gateway(request).scheduler.webhooks(bearer(request), "ListWebhooks",
                                                      pb.ListWebhooksRequest(page=page, per_page=per_page))
    return JSONResponse({"webhooks": [endpoint_json(w) for w in reply.webhooks], "total": reply.total})


async def get_webhook(request: Request) -> Response:
    """GET /v1/webhook/{id}."""
    reply = await gateway(request).scheduler.webhooks(bearer(request), "GetWebhook",
                                                      pb.GetWebhookRequest(id=request.path_params["id"]))
    return JSONResponse(endpoint_json(reply.webhook))


async def update_webhook(request: Request) -> Response:
    """PUT /v1/webhook/{id} {url?, events?, description?}: only the fields sent change; the
    secret stays, and a new url takes the endpoint's pending deliveries."""
    gw, auth = gateway(request), bearer(request)
    await gw.scheduler.get_user(auth)
    body = await json_body.read_object(request, FIELDS)
    update = pb.UpdateWebhookRequest(id=request.path_params["id"], update_mask=FieldMask(paths=list(body)))
    if "url" in body:
        update.webhook.url = json_body.text(body, "url")
    if "events" in body:
        update.webhook.events.extend(json_body.text_list(body, "events"))
    if "description" in body:
        update.webhook.description = json_body.text(body, "description")
    reply = await gw.scheduler.webhooks(auth, "UpdateWebhook", update)
    return JSONResponse(endpoint_json(reply.webhook))


async def delete_webhook(request: Request) -> Response:
    """DELETE /v1/webhook/{id}: 204."""
    await gateway(request).scheduler.webhooks(bearer(request), "DeleteWebhook",
                                              pb.DeleteWebhookRequest(id=request.path_params["id"]))
    return Response(status_code=204)


async def list_deliveries(request: Request) -> Response:
    """GET /v1/webhook/{id}/deliveries?page=&per_page=: newest first, each with its attempts."""
    page, per_page = _page(request)
    reply = await gateway(request).scheduler.webhooks(bearer(request), "ListWebhookDeliveries",
                                                      pb.ListWebhookDeliveriesRequest(
                                                          id=request.path_params["id"], page=page, per_page=per_page))
    return JSONResponse({"deliveries": [delivery_json(d) for d in reply.deliveries], "total": reply.total})


async def redeliver(request: Request) -> Response:
    """POST /v1/webhook/{id}/deliveries/{delivery_id}/redeliver: the delivery, pending again."""
    reply = await gateway(request).scheduler.webhooks(bearer(request), "RedeliverWebhookDelivery",
                                                      pb.RedeliverWebhookDeliveryRequest(
                                                          id=request.path_params["id"],
                                                          delivery_id=request.path_params["delivery_id"]))
    return JSONResponse(delivery_json(reply.delivery))


async def workflow_secret(request: Request) -> Response:
    """GET /v1/webhook-secret: {"secret"} that signs deliveries to workflows' webhook_url."""
    reply = await gateway(request).scheduler.webhooks(bearer(request), "GetWorkflowWebhookSecret",
                                                      pb.GetWorkflowWebhookSecretRequest())
    return JSONResponse({"secret": reply.secret})


async def workflow_deliveries(request: Request) -> Response:
    """GET /v1/workflow/{id}/webhook-deliveries?page=&per_page=: its webhook_url's deliveries."""
    page, per_page = _page(request)
    reply = await gateway(request).scheduler.webhooks(bearer(request), "ListWorkflowWebhookDeliveries",
                                                      pb.ListWorkflowWebhookDeliveriesRequest(
                                                          id=request.path_params["id"], page=page, per_page=per_page))
    return JSONResponse({"deliveries": [delivery_json(d) for d in reply.deliveries], "total": reply.total})
