"""The /v1/workflow routes: create and rerun (streamed multipart), read, list, cancel, delete,
outputs (the SSE subscription is in subscribe_routes.py).

Every handler forwards the caller's bearer token to the scheduler, which authenticates it.
Handlers raise domain errors; services.gateway.errors turns them into the public error body.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Iterable

from comfyfleet.scheduler.v1 import workflow_pb2, workflow_service_pb2
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from services.gateway import presenters
from services.gateway.context import Gateway, bearer, gateway
from services.gateway.errors import (
    ComfyfleetError,
    Conflict,
    InvalidArgument,
    NotFound,
    OutcomeUnknown,
    TooLarge,
)
from services.gateway.multipart import MultipartReader, describe_size
from services.gateway.storage_client import Storage
from services.gateway.workflow_form import TAG_PATTERN, CreateForm, invalid_field

log = logging.getLogger(__name__)

MAX_PER_PAGE = 100
MAX_IDEMPOTENCY_KEY_CHARS = 255
DEFAULT_PER_PAGE = 10
_INT32_MAX = 2**31 - 1
_DIGITS = re.compile(r"[0-9]{1,19}")


async def create_workflow(request: Request) -> Response:
    """POST /v1/workflow: authenticate, stream the parts (files straight to storage), create."""
    gw = gateway(request)
    auth = bearer(request)
    await gw.scheduler.check_token(auth)  # a bad token is a 401 before any byte of the body is read
    form = CreateForm(str(uuid.uuid4()), gw.storage, max_file_bytes=gw.settings.max_request_bytes)

    async def submit(create: workflow_service_pb2.CreateWorkflowRequest) -> workflow_pb2.Workflow:
        return await gw.scheduler.create_workflow(auth, create)

    return await submit_form(request, gw, form, submit)


async def rerun_workflow(request: Request) -> Response:
    """POST /v1/workflow/{id}/rerun: only the $/# fields to change (and priority); 201 the new workflow.

    Files not sent again are copied by the scheduler under the new workflow's id."""
    gw = gateway(request)
    auth = bearer(request)
    source_id = request.path_params["id"]
    await gw.scheduler.get_workflow(auth, source_id)  # 401/404 before any byte of the body is read
    form = CreateForm(str(uuid.uuid4()), gw.storage, max_file_bytes=gw.settings.max_request_bytes,
                      mode="rerun")

    async def submit(create: workflow_service_pb2.CreateWorkflowRequest) -> workflow_pb2.Workflow:
        form.stored_files = True  # the scheduler may have copied files under the new id
        return await gw.scheduler.rerun_workflow(auth, workflow_service_pb2.RerunWorkflowRequest(
            id=source_id, new_id=form.workflow_id, inputs=create.inputs, priority=create.priority,
            idempotency_key=create.idempotency_key))

    return await submit_form(request, gw, form, submit)


async def submit_form(
    request: Request,
    gw: Gateway,
    form: CreateForm,
    submit: Callable[[workflow_service_pb2.CreateWorkflowRequest], Awaitable[workflow_pb2.Workflow]],
) -> Response:
    """Reads the multipart body into `form` within the size limit, submits it, answers 201.

    On failure the objects stored under the new workflow's id are deleted, unless the
    scheduler may have committed the workflow (its deadline passed); so are they when an
    Idempotency-Key replays an earlier answer (another workflow's id comes back)."""
    limit = gw.settings.max_request_bytes
    key = request.headers.get("idempotency-key", "")
    if "idempotency-key" in request.headers and not (
            1 <= len(key) <= MAX_IDEMPOTENCY_KEY_CHARS and key.isascii() and key.isprintable()):
        raise invalid_field("Idempotency-Key", "Idempotency-Key must be 1 to 255 printable ASCII characters",
                            reason="INVALID_IDEMPOTENCY_KEY")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise TooLarge(
            f"the request is over the limit of {describe_size(limit)}",
            reason="REQUEST_TOO_LARGE",
            details=[{"limit_bytes": limit}],
        )
    try:
        if form.rerun and _empty_body(request):
            create = workflow_service_pb2.CreateWorkflowRequest(id=form.workflow_id)
        else:
            reader = MultipartReader(request.headers.get("content-type"), request.stream(), max_body_bytes=limit)
            create = await form.read(reader)
        create.idempotency_key = key
        workflow = await submit(create)
        if workflow.id != form.workflow_id:  # an Idempotency-Key replay: this attempt's files are not needed
            form.stored_files = True
            await _delete_inputs(gw.storage, form)
    except ClientDisconnect:
        await _delete_inputs(gw.storage, form)
        raise InvalidArgument("the client disconnected during the upload", reason="CLIENT_DISCONNECTED") from None
    except OutcomeUnknown:
        # The scheduler may have committed the workflow: its inputs must stay.
        log.warning("create of workflow %s timed out; its inputs are kept", form.workflow_id)
        raise
    except BaseException:
        await _delete_inputs(gw.storage, form)
        raise
    return JSONResponse(
        presenters.workflow_summary(workflow),
        status_code=201,
        headers={"Location": f"/v1/workflow/{workflow.id}"},
    )


def _empty_body(request: Request) -> bool:
    """A rerun with nothing to change may come without a body at all."""
    return request.headers.get("content-length") == "0" or (
        "content-type" not in request.headers and "transfer-encoding" not in request.headers
    )


async def _delete_inputs(storage: Storage, form: CreateForm) -> None:
    """Best effort: a failure is logged; storage's retention sweep removes what is left."""
    if not form.stored_files:
        return
    try:
        await storage.delete_prefix(form.input_prefix)
    except ComfyfleetError as err:
        log.warning("could not delete %s: %s", form.input_prefix, err.message)


async def delete_workflow(request: Request) -> Response:
    """DELETE /v1/workflow/{id}: 204; 409 while it has not finished."""
    gw = gateway(request)
    await gw.scheduler.delete_workflow(bearer(request), request.path_params["id"])
    return Response(status_code=204)


async def get_workflow(request: Request) -> Response:
    """GET /v1/workflow/{id}: the full record."""
    gw = gateway(request)
    workflow = await gw.scheduler.get_workflow(bearer(request), request.path_params["id"])
    return JSONResponse(presenters.workflow_record(workflow))


async def list_workflows(request: Request) -> Response:
    """GET /v1/workflow?page=&per_page=&status=&tag=: newest first, with the total."""
    gw = gateway(request)
    auth = bearer(request)
    query = request.query_params
    list_request = workflow_service_pb2.ListWorkflowsRequest(
        page=int_param(query.get("page"), "page", default=1, maximum=_INT32_MAX),
        per_page=int_param(query.get("per_page"), "per_page", default=DEFAULT_PER_PAGE, maximum=MAX_PER_PAGE),
    )
    status = query.get("status")
    if status:
        if status not in presenters.STATUS_BY_NAME:
            raise invalid_field(
                "status", f"status must be one of {', '.join(presenters.STATUS_BY_NAME)}", value=status
            )
        list_request.status = presenters.STATUS_BY_NAME[status]
    tag = query.get("tag")
    if tag:
        if not TAG_PATTERN.fullmatch(tag):
            raise invalid_field("tag", f"invalid tag {tag!r} in tag: 1 to 64 of A-Z a-z 0-9 . _ -", value=tag)
        list_request.tag = tag
    page = await gw.scheduler.list_workflows(auth, list_request)
    return JSONResponse({
        "workflows": [presenters.workflow_summary(workflow) for workflow in page.workflows],
        "total": page.total,
    })


def int_param(raw: str | None, name: str, *, default: int, maximum: int) -> int:
    if raw is None or raw == "":
        return default
    if not _DIGITS.fullmatch(raw) or not 1 <= int(raw) <= maximum:
        raise invalid_field(name, f"{name} must be an integer from 1 to {maximum}", value=raw)
    return int(raw)


async def cancel_workflow(request: Request) -> Response:
    """POST /v1/workflow/{id}/cancel: 200 with the record; 400 when it already finished."""
    gw = gateway(request)
    try:
        workflow = await gw.scheduler.cancel_workflow(bearer(request), request.path_params["id"])
    except Conflict as err:  # API.md: cancelling a finished workflow is a 400
        raise InvalidArgument(err.message, reason=err.reason, details=err.details) from None
    return JSONResponse(presenters.workflow_record(workflow))


async def list_outputs(request: Request) -> Response:
    """GET /v1/workflow/{id}/outputs: signed URLs of a completed workflow's outputs."""
    gw = gateway(request)
    workflow = await gw.scheduler.get_workflow(bearer(request), request.path_params["id"])
    if workflow.status != workflow_pb2.WORKFLOW_STATUS_COMPLETED:
        raise NotFound(
            f"workflow has not completed (status {presenters.status_name(workflow.status)})",
            reason="WORKFLOW_NOT_COMPLETED",
        )
    srcs = await presign_all(gw.storage, presenters.object_keys(workflow))
    return JSONResponse(presenters.outputs(workflow, srcs))


async def presign_all(storage: Storage, keys: Iterable[str]) -> dict[str, str]:
    """Object key -> fresh signed URL, for each distinct key, concurrently."""
    unique = list(dict.fromkeys(keys))
    urls = await asyncio.gather(*(storage.presign(key) for key in unique))
    return dict(zip(unique, urls, strict=True))
