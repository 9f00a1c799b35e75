"""What users do with templates: save (graph and placeholders checked), read, page, update,
delete, and run (a workflow from the template's body, created as CreateWorkflow does)."""

from __future__ import annotations

import uuid

from comfyfleet.scheduler.v1 import template_pb2, template_service_pb2, workflow_pb2, workflow_service_pb2

from services.scheduler import idempotency
from services.scheduler.core import placeholders
from services.scheduler.core.graph import parse_graph
from services.scheduler.db.models import TemplateRow, UserRow
from services.scheduler.db.template_store import TemplateStore
from services.scheduler.errors import InvalidArgument
from services.scheduler.limits import Limits
from services.scheduler.records import template_pb, utcnow
from services.scheduler.runners import page_args
from services.scheduler.workflows import Workflows

MAX_NAME = 100
MAX_DESCRIPTION = 500
UPDATABLE = ("name", "description", "body")


def _bad(message: str, field: str, reason: str = "INVALID_FIELD") -> InvalidArgument:
    return InvalidArgument(message, reason=reason, details=[{"field": field}])


def check_name(raw: str) -> str:
    name = raw.strip()
    if not name:
        raise _bad("name cannot be empty", "name", "INVALID_NAME")
    if len(name) > MAX_NAME:
        raise _bad(f"name must be at most {MAX_NAME} characters", "name", "INVALID_NAME")
    return name


def check_description(raw: str) -> str:
    description = raw.strip()
    if not description:
        raise _bad("description cannot be empty", "description")
    if len(description) > MAX_DESCRIPTION:
        raise _bad(f"description must be at most {MAX_DESCRIPTION} characters", "description")
    return description


def check_body(text: str) -> str:
    """An API-format graph whose placeholders parse; errors name the field `body`."""
    if not text.strip():
        raise _bad("body is required", "body", "MISSING_FIELD")
    try:
        placeholders.scan(parse_graph(text))
    except InvalidArgument as err:
        details = [{**d, "field": "body"} if d.get("field") == "workflow_json" else d for d in err.details]
        raise type(err)(err.message.replace("workflow_json", "body"), reason=err.reason, details=details) from None
    return text


class Templates:
    def __init__(self, store: TemplateStore, workflows: Workflows, limits: Limits | None = None) -> None:
        self.limits = limits
        self.store = store
        self.workflows = workflows

    async def create(self, user: UserRow, req: template_service_pb2.CreateTemplateRequest) -> template_pb2.Template:
        now = utcnow()
        row = TemplateRow(id=str(uuid.uuid4()), user_id=user.id, name=check_name(req.name),
                          description=check_description(req.description), body=check_body(req.body),
                          created_at=now, updated_at=now)
        if self.limits is not None:
            await self.limits.check_new_template(user)
        return template_pb(await self.store.create(row))

    async def get(self, user: UserRow, template_id: str) -> template_pb2.Template:
        return template_pb(await self.store.get(template_id, user.id))

    async def list_page(
        self, user: UserRow, req: template_service_pb2.ListTemplatesRequest
    ) -> tuple[list[template_pb2.Template], int]:
        page, per_page = page_args(req.page, req.per_page)
        rows, total = await self.store.list_page(user.id, page=page, per_page=per_page)
        return [template_pb(r, with_body=False) for r in rows], total

    async def update(self, user: UserRow, req: template_service_pb2.UpdateTemplateRequest) -> template_pb2.Template:
        paths = list(req.update_mask.paths)
        unknown = [p for p in paths if p not in UPDATABLE]
        if unknown:
            raise InvalidArgument(f"cannot update {', '.join(unknown)}: only {', '.join(UPDATABLE)}",
                                  reason="UNKNOWN_FIELD", details=[{"field": p} for p in unknown])
        checks = {"name": check_name, "description": check_description, "body": check_body}
        values = {p: checks[p](getattr(req.template, p)) for p in paths}

        def mutate(row: TemplateRow) -> None:
            for key, value in values.items():
                setattr(row, key, value)

        return template_pb(await self.store.update(req.id, user.id, mutate))

    async def delete(self, user: UserRow, template_id: str) -> None:
        await self.store.delete(template_id, user.id)

    async def run(self, user: UserRow, req: template_service_pb2.RunTemplateRequest) -> workflow_pb2.Workflow:
        template = await self.store.get(req.id, user.id)
        claim = idempotency.claim(req.idempotency_key, f"template:{template.id}", req.inputs, name=req.name,
                                  tags=list(req.tags), priority=req.priority, webhook_url=req.webhook_url)
        return await self.workflows.create(user, workflow_service_pb2.CreateWorkflowRequest(
            id=req.workflow_id, name=req.name or template.name, workflow_json=template.body,
            tags=req.tags, inputs=req.inputs, priority=req.priority,
        ), claim)
