"""TemplateService: proto in, domain calls (services.scheduler.templates), proto out."""

from __future__ import annotations

from comfyfleet.scheduler.v1 import template_service_pb2 as pb
from comfyfleet.scheduler.v1 import template_service_pb2_grpc

from services.common.grpc_server import maps_domain_errors
from services.scheduler.db.identity_store import IdentityStore
from services.scheduler.templates import Templates
from services.scheduler.workflow_servicer import Context, caller


class TemplateServicer(template_service_pb2_grpc.TemplateServiceServicer):
    def __init__(self, identity: IdentityStore, templates: Templates) -> None:
        self.identity = identity
        self.templates = templates

    @maps_domain_errors
    async def CreateTemplate(self, request: pb.CreateTemplateRequest, context: Context) -> pb.CreateTemplateResponse:
        user = await caller(self.identity, context)
        return pb.CreateTemplateResponse(template=await self.templates.create(user, request))

    @maps_domain_errors
    async def ListTemplates(self, request: pb.ListTemplatesRequest, context: Context) -> pb.ListTemplatesResponse:
        user = await caller(self.identity, context)
        templates, total = await self.templates.list_page(user, request)
        return pb.ListTemplatesResponse(templates=templates, total=total)

    @maps_domain_errors
    async def GetTemplate(self, request: pb.GetTemplateRequest, context: Context) -> pb.GetTemplateResponse:
        user = await caller(self.identity, context)
        return pb.GetTemplateResponse(template=await self.templates.get(user, request.id))

    @maps_domain_errors
    async def UpdateTemplate(self, request: pb.UpdateTemplateRequest, context: Context) -> pb.UpdateTemplateResponse:
        user = await caller(self.identity, context)
        return pb.UpdateTemplateResponse(template=await self.templates.update(user, request))

    @maps_domain_errors
    async def DeleteTemplate(self, request: pb.DeleteTemplateRequest, context: Context) -> pb.DeleteTemplateResponse:
        user = await caller(self.identity, context)
        await self.templates.delete(user, request.id)
        return pb.DeleteTemplateResponse()

    @maps_domain_errors
    async def RunTemplate(self, request: pb.RunTemplateRequest, context: Context) -> pb.RunTemplateResponse:
        user = await caller(self.identity, context)
        return pb.RunTemplateResponse(workflow=await self.templates.run(user, request))
