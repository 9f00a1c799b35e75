"""WebhookService: proto in, domain calls (service.py), proto out; and CreateWorkflow /
RunTemplate with a webhook_url: the URL is checked and recorded before the workflow is
created (so the dispatcher sees it with the workflow's first event) and forgotten if the
create fails or answers with an earlier workflow (an idempotent replay)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

from comfyfleet.scheduler.v1 import template_service_pb2, webhook_service_pb2_grpc, workflow_pb2, workflow_service_pb2
from comfyfleet.scheduler.v1 import webhook_service_pb2 as pb

from services.common.grpc_server import maps_domain_errors
from services.scheduler.db.identity_store import IdentityStore
from services.scheduler.db.models import UserRow
from services.scheduler.errors import InvalidArgument
from services.scheduler.template_servicer import TemplateServicer
from services.scheduler.templates import Templates
from services.scheduler.webhooks.service import Webhooks
from services.scheduler.workflow_servicer import Context, WorkflowServicer, caller
from services.scheduler.workflows import Workflows


class WebhookServicer(webhook_service_pb2_grpc.WebhookServiceServicer):
    def __init__(self, identity: IdentityStore, webhooks: Webhooks) -> None:
        self.identity = identity
        self.webhooks = webhooks

    @maps_domain_errors
    async def CreateWebhook(self, request: pb.CreateWebhookRequest, context: Context) -> pb.CreateWebhookResponse:
        user = await caller(self.identity, context)
        endpoint, secret = await self.webhooks.create(user, request)
        endpoint.secret = secret
        return pb.CreateWebhookResponse(webhook=endpoint)

    @maps_domain_errors
    async def ListWebhooks(self, request: pb.ListWebhooksRequest, context: Context) -> pb.ListWebhooksResponse:
        user = await caller(self.identity, context)
        found, total = await self.webhooks.list_page(user, request)
        return pb.ListWebhooksResponse(webhooks=found, total=total)

    @maps_domain_errors
    async def GetWebhook(self, request: pb.GetWebhookRequest, context: Context) -> pb.GetWebhookResponse:
        user = await caller(self.identity, context)
        return pb.GetWebhookResponse(webhook=await self.webhooks.get(user, request.id))

    @maps_domain_errors
    async def UpdateWebhook(self, request: pb.UpdateWebhookRequest, context: Context) -> pb.UpdateWebhookResponse:
        user = await caller(self.identity, context)
        return pb.UpdateWebhookResponse(webhook=await self.webhooks.update(user, request))

    @maps_domain_errors
    async def DeleteWebhook(self, request: pb.DeleteWebhookRequest, context: Context) -> pb.DeleteWebhookResponse:
        user = await caller(self.identity, context)
        await self.webhooks.delete(user, request.id)
        return pb.DeleteWebhookResponse()

    @maps_domain_errors
    async def ListWebhookDeliveries(self, request: pb.ListWebhookDeliveriesRequest,
                                    context: Context) -> pb.ListWebhookDeliveriesResponse:
        user = await caller(self.identity, context)
        found, total = await self.webhooks.deliveries(user, request)
        return pb.ListWebhookDeliveriesResponse(deliveries=found, total=total)

    @maps_domain_errors
    async def RedeliverWebhookDelivery(self, request: pb.RedeliverWebhookDeliveryRequest,
                                       context: Context) -> pb.RedeliverWebhookDeliveryResponse:
        user = await caller(self.identity, context)
        return pb.RedeliverWebhookDeliveryResponse(delivery=await self.webhooks.redeliver(user, request))

    @maps_domain_errors
    async def GetWorkflowWebhookSecret(self, request: pb.GetWorkflowWebhookSecretRequest,
                                       context: Context) -> pb.GetWorkflowWebhookSecretResponse:
        user = await caller(self.identity, context)
        return pb.GetWorkflowWebhookSecretResponse(secret=await self.webhooks.workflow_secret(user))

    @maps_domain_errors
    async def ListWorkflowWebhookDeliveries(self, request: pb.ListWorkflowWebhookDeliveriesRequest,
                                            context: Context) -> pb.ListWorkflowWebhookDeliveriesResponse:
        user = await caller(self.identity, context)
        found, total = await self.webhooks.workflow_deliveries(user, request)
        return pb.ListWorkflowWebhookDeliveriesResponse(deliveries=found, total=total)


def _workflow_id(raw: str, field: str) -> str:
    try:
        return str(uuid.UUID(raw)) if raw else str(uuid.uuid4())
    except ValueError:
        raise InvalidArgument(f"{field} must be a UUID", details=[{"field": field}]) from None


async def _create_with_url(webhooks: Webhooks, user: UserRow, workflow_id: str, url: str,
                           create: Callable[[], Awaitable[workflow_pb2.Workflow]]) -> workflow_pb2.Workflow:
    """Records `url` for `workflow_id`, runs `create`, and forgets the URL again when the create
    fails or answers with an earlier workflow (an idempotent replay)."""
    await webhooks.give_workflow_url(user, workflow_id, url)
    try:
        workflow = await create()
    except Exception:  # (not when cancelled: the create may still commit)
        await webhooks.forget_workflow_url(workflow_id)
        raise
    if workflow.id != workflow_id:
        await webhooks.forget_workflow_url(workflow_id)
    return workflow


class WebhookWorkflowServicer(WorkflowServicer):
    """WorkflowService, with CreateWorkflow taking a webhook_url."""

    def __init__(self, identity: IdentityStore, workflows: Workflows, webhooks: Webhooks) -> None:
        super().__init__(identity, workflows)
        self.webhooks = webhooks

    async def create(self, user: UserRow, request: workflow_service_pb2.CreateWorkflowRequest) -> workflow_pb2.Workflow:
        if not request.webhook_url:
            return await self.workflows.create(user, request)
        request.id = _workflow_id(request.id, "id")
        return await _create_with_url(self.webhooks, user, request.id, request.webhook_url,
                                      lambda: self.workflows.create(user, request))


class WebhookTemplateServicer(TemplateServicer):
    """TemplateService, with RunTemplate taking a webhook_url."""

    def __init__(self, identity: IdentityStore, templates: Templates, webhooks: Webhooks) -> None:
        super().__init__(identity, templates)
        self.webhooks = webhooks

    @maps_domain_errors
    async def RunTemplate(self, request: template_service_pb2.RunTemplateRequest,
                          context: Context) -> template_service_pb2.RunTemplateResponse:
        user = await caller(self.identity, context)
        if not request.webhook_url:
            return template_service_pb2.RunTemplateResponse(workflow=await self.templates.run(user, request))
        request.workflow_id = _workflow_id(request.workflow_id, "workflow_id")
        workflow = await _create_with_url(self.webhooks, user, request.workflow_id, request.webhook_url,
                                          lambda: self.templates.run(user, request))
        return template_service_pb2.RunTemplateResponse(workflow=workflow)
