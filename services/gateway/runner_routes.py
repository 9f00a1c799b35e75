"""The /v1/runner routes (JSON): register, list, read, update, delete, interrupt; and
/v1/runner-token. The scheduler validates the fields and masks header values."""

from __future__ import annotations

from comfyfleet.scheduler.v1 import runner_pb2
from comfyfleet.scheduler.v1 import runner_service_pb2 as pb
from google.protobuf.field_mask_pb2 import FieldMask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from services.gateway import json_body, presenters
from services.gateway.context import bearer, gateway
from services.gateway.workflow_form import invalid_field
from services.gateway.workflow_routes import DEFAULT_PER_PAGE, MAX_PER_PAGE, int_param

_INT32_MAX = 2**31 - 1
FIELDS = ("name", "endpoint", "headers", "tags")
UPDATABLE = (*FIELDS, "status")


def _fill(runner: pb.CreateRunnerRequest | runner_pb2.Runner, body: dict[str, object]) -> None:
    if "name" in body:
        runner.name = json_body.text(body, "name")
    if "endpoint" in body:
        runner.endpoint = json_body.text(body, "endpoint")
    if "headers" in body:
        runner.headers.update(json_body.text_map(body, "headers"))
    if "tags" in body:
        runner.tags.extend(json_body.text_list(body, "tags"))


async def create_runner(request: Request) -> Response:
    """POST /v1/runner: 201 with the runner, active."""
    gw, auth = gateway(request), bearer(request)
    await gw.scheduler.get_user(auth)
    body = await json_body.read_object(request, FIELDS)
    for required in ("name", "endpoint"):
        if required not in body:
            raise invalid_field(required, f"missing required field {required!r}", reason="MISSING_FIELD")
    create = pb.CreateRunnerRequest()
    _fill(create, body)
    reply = await gw.scheduler.runners(auth, "CreateRunner", create)
    return JSONResponse(presenters.runner(reply.runner), status_code=201,
                        headers={"Location": f"/v1/runner/{reply.runner.id}"})


async def list_runners(request: Request) -> Response:
    """GET /v1/runner?page=&per_page=&status=: newest first, with the total."""
    gw, auth = gateway(request), bearer(request)
    query = request.query_params
    list_request = pb.ListRunnersRequest(
        page=int_param(query.get("page"), "page", default=1, maximum=_INT32_MAX),
        per_page=int_param(query.get("per_page"), "per_page", default=DEFAULT_PER_PAGE, maximum=MAX_PER_PAGE),
    )
    if status := query.get("status"):
        if status not in presenters.RUNNER_STATUS_BY_NAME:
            raise invalid_field("status", "status must be active or disabled", value=status)
        list_request.status = presenters.RUNNER_STATUS_BY_NAME[status]
    reply = await gw.scheduler.runners(auth, "ListRunners", list_request)
    return JSONResponse({"runners": [presenters.runner(r) for r in reply.runners], "total": reply.total})


async def get_runner(request: Request) -> Response:
    """GET /v1/runner/{id}."""
    gw = gateway(request)
    reply = await gw.scheduler.runners(bearer(request), "GetRunner", pb.GetRunnerRequest(id=request.path_params["id"]))
    return JSONResponse(presenters.runner(reply.runner))


async def update_runner(request: Request) -> Response:
    """PUT /v1/runner/{id}: only the fields sent change; headers and tags are replaced whole."""
    gw, auth = gateway(request), bearer(request)
    await gw.scheduler.get_user(auth)
    body = await json_body.read_object(request, UPDATABLE)
    update = pb.UpdateRunnerRequest(id=request.path_params["id"], update_mask=FieldMask(paths=list(body)))
    _fill(update.runner, body)
    if "status" in body:
        status = json_body.text(body, "status")
        if status not in presenters.RUNNER_STATUS_BY_NAME:
            raise invalid_field("status", "status must be active or disabled", value=status)
        update.runner.status = presenters.RUNNER_STATUS_BY_NAME[status]
    reply = await gw.scheduler.runners(auth, "UpdateRunner", update)
    return JSONResponse(presenters.runner(reply.runner))


async def delete_runner(request: Request) -> Response:
    """DELETE /v1/runner/{id}: 204; its unfinished workflows go back to placement."""
    gw = gateway(request)
    await gw.scheduler.runners(bearer(request), "DeleteRunner", pb.DeleteRunnerRequest(id=request.path_params["id"]))
    return Response(status_code=204)


async def interrupt_runner(request: Request) -> Response:
    """POST /v1/runner/{id}/interrupt: 200 with the workflows asked to stop; 409 when offline."""
    gw = gateway(request)
    reply = await gw.scheduler.runners(bearer(request), "InterruptRunner",
                                       pb.InterruptRunnerRequest(id=request.path_params["id"]))
    return JSONResponse({"workflow_ids": list(reply.workflow_ids)})


async def create_runner_token(request: Request) -> Response:
    """POST /v1/runner-token: 201 {token, expires_at}; the token is shown only here."""
    gw, auth = gateway(request), bearer(request)
    await gw.scheduler.get_user(auth)
    body = await json_body.read_object(request, ("ttl_seconds",), optional_body=True)
    create = pb.CreateRunnerTokenRequest()
    if "ttl_seconds" in body:
        create.ttl_seconds = json_body.integer(body, "ttl_seconds")
        if not 0 <= create.ttl_seconds <= 2**62:
            raise invalid_field("ttl_seconds", "ttl_seconds must be 0 or more")
    reply = await gw.scheduler.runners(auth, "CreateRunnerToken", create)
    expires = presenters.rfc3339(reply.expires_at if reply.HasField("expires_at") else None)
    return JSONResponse({"token": reply.token, "expires_at": expires}, status_code=201,
                        headers={"Cache-Control": "no-store"})
