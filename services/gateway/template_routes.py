"""The /v1/template routes: create and update (multipart: name, description, body JSON file),
list, read, delete (JSON), and run (multipart like POST /v1/workflow without workflow_json).

The scheduler checks the graph and its placeholders when a template is saved."""

from __future__ import annotations

import uuid

from comfyfleet.scheduler.v1 import template_service_pb2 as pb
from comfyfleet.scheduler.v1 import workflow_pb2, workflow_service_pb2
from google.protobuf.field_mask_pb2 import FieldMask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from services.gateway import presenters
from services.gateway.context import bearer, gateway
from services.gateway.multipart import MultipartReader
from services.gateway.workflow_form import MAX_TEXT_FIELD_BYTES, MAX_WORKFLOW_JSON_BYTES, CreateForm, invalid_field
from services.gateway.workflow_routes import DEFAULT_PER_PAGE, MAX_PER_PAGE, int_param, submit_form

_INT32_MAX = 2**31 - 1
FIELDS = ("name", "description", "body")
MAX_TEMPLATE_REQUEST_BYTES = MAX_WORKFLOW_JSON_BYTES + 2 * MAX_TEXT_FIELD_BYTES


async def _read_fields(request: Request) -> dict[str, str]:
    """The multipart fields name, description, body (a file part or text), each at most once."""
    reader = MultipartReader(request.headers.get("content-type"), request.stream(),
                             max_body_bytes=MAX_TEMPLATE_REQUEST_BYTES)
    fields: dict[str, str] = {}
    async for part in reader.parts():
        if part.name not in FIELDS:
            raise invalid_field(part.name, f"unknown field {part.name!r}: expected name, description or body",
                                reason="UNKNOWN_FIELD")
        if part.name in fields:
            raise invalid_field(part.name, f"field {part.name!r} is sent more than once", reason="DUPLICATE_FIELD")
        raw = await part.read(limit=MAX_WORKFLOW_JSON_BYTES if part.name == "body" else MAX_TEXT_FIELD_BYTES)
        try:
            fields[part.name] = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise invalid_field(part.name, f"field {part.name!r} is not valid UTF-8 text") from None
    return fields


async def create_template(request: Request) -> Response:
    """POST /v1/template: 201 with the template."""
    gw, auth = gateway(request), bearer(request)
    await gw.scheduler.get_user(auth)
    fields = await _read_fields(request)
    for required in FIELDS:
        if required not in fields:
            raise invalid_field(required, f"missing required field {required!r}", reason="MISSING_FIELD")
    reply = await gw.scheduler.templates(auth, "CreateTemplate", pb.CreateTemplateRequest(**fields))
    return JSONResponse(presenters.template(reply.template), status_code=201,
                        headers={"Location": f"/v1/template/{reply.template.id}"})


async def list_templates(request: Request) -> Response:
    """GET /v1/template?page=&per_page=: newest first, without bodies."""
    gw = gateway(request)
    query = request.query_params
    reply = await gw.scheduler.templates(bearer(request), "ListTemplates", pb.ListTemplatesRequest(
        page=int_param(query.get("page"), "page", default=1, maximum=_INT32_MAX),
        per_page=int_param(query.get("per_page"), "per_page", default=DEFAULT_PER_PAGE, maximum=MAX_PER_PAGE),
    ))
    return JSONResponse({"templates": [presenters.template(t, with_body=False) for t in reply.templates],
                         "total": reply.total})


async def get_template(request: Request) -> Response:
    """GET /v1/template/{id}: with its body."""
    gw = gateway(request)
    reply = await gw.scheduler.templates(bearer(request), "GetTemplate",
                                         pb.GetTemplateRequest(id=request.path_params["id"]))
    return JSONResponse(presenters.template(reply.template))


async def update_template(request: Request) -> Response:
    """PUT /v1/template/{id}: only the fields sent change."""
    gw, auth = gateway(request), bearer(request)
    await gw.scheduler.get_user(auth)
    fields = await _read_fields(request)
    update = pb.UpdateTemplateRequest(id=request.path_params["id"], update_mask=FieldMask(paths=list(fields)))
    for name, value in fields.items():
        setattr(update.template, name, value)
    reply = await gw.scheduler.templates(auth, "UpdateTemplate", update)
    return JSONResponse(presenters.template(reply.template))


async def delete_template(request: Request) -> Response:
    """DELETE /v1/template/{id}: 204."""
    gw = gateway(request)
    await gw.scheduler.templates(bearer(request), "DeleteTemplate",
                                 pb.DeleteTemplateRequest(id=request.path_params["id"]))
    return Response(status_code=204)


async def run_template(request: Request) -> Response:
    """POST /v1/template/{id}/run: 201 with the new workflow, as POST /v1/workflow answers."""
    gw, auth = gateway(request), bearer(request)
    template_id = request.path_params["id"]
    await gw.scheduler.templates(auth, "GetTemplate", pb.GetTemplateRequest(id=template_id))  # 401/404 first
    form = CreateForm(str(uuid.uuid4()), gw.storage, max_file_bytes=gw.settings.max_request_bytes, mode="template")

    async def submit(create: workflow_service_pb2.CreateWorkflowRequest) -> workflow_pb2.Workflow:
        reply = await gw.scheduler.templates(auth, "RunTemplate", pb.RunTemplateRequest(
            id=template_id, workflow_id=form.workflow_id, name=create.name, tags=create.tags,
            inputs=create.inputs, priority=create.priority, idempotency_key=create.idempotency_key,
            webhook_url=create.webhook_url))
        workflow: workflow_pb2.Workflow = reply.workflow
        return workflow

    return await submit_form(request, gw, form, submit)
