"""WorkflowService and UserService: proto in, domain calls, proto out. The caller is the
user of the bearer token in the "authorization" metadata."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, TypeAlias

import grpc
from comfyfleet.scheduler.v1 import (
    user_service_pb2,
    user_service_pb2_grpc,
    workflow_pb2,
    workflow_service_pb2,
    workflow_service_pb2_grpc,
)

from services.common.errors import ComfyfleetError, InvalidArgument, status_proto_for
from services.common.grpc_server import WATCH_READY, maps_domain_errors
from services.common.grpc_telemetry import log_item
from services.scheduler.db.identity_store import API, IdentityStore
from services.scheduler.db.models import UserRow
from services.scheduler.errors import Unauthenticated
from services.scheduler.limits import Limits
from services.scheduler.records import user_pb
from services.scheduler.workflows import Workflows

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]

log = logging.getLogger(__name__)

# CreateWorkflows: at most this many items in one call.
MAX_BATCH = 256
CREATE_METHOD = "/comfyfleet.scheduler.v1.WorkflowService/CreateWorkflow"


async def caller(identity: IdentityStore, context: Context) -> UserRow:
    """The user behind the call's "authorization: Bearer <token>" metadata."""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            scheme, _, token = str(value).partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthenticated("authorization must be 'Bearer <token>'", reason="TOKEN_MALFORMED")
            return await identity.authenticate(token.strip(), API)
    raise Unauthenticated("missing bearer token", reason="TOKEN_MISSING")


class WorkflowServicer(workflow_service_pb2_grpc.WorkflowServiceServicer):
    def __init__(self, identity: IdentityStore, workflows: Workflows) -> None:
        self.identity = identity
        self.workflows = workflows

    async def create(self, user: UserRow, request: workflow_service_pb2.CreateWorkflowRequest) -> workflow_pb2.Workflow:
        """One create of `user`: CreateWorkflow's, and each item of CreateWorkflows."""
        return await self.workflows.create(user, request)

    @maps_domain_errors
    async def CreateWorkflow(
        self, request: workflow_service_pb2.CreateWorkflowRequest, context: Context
    ) -> workflow_service_pb2.CreateWorkflowResponse:
        user = await caller(self.identity, context)
        return workflow_service_pb2.CreateWorkflowResponse(workflow=await self.create(user, request))

    @maps_domain_errors
    async def CreateWorkflows(
        self, request: workflow_service_pb2.CreateWorkflowsRequest, context: Context
    ) -> workflow_service_pb2.CreateWorkflowsResponse:
        """The items at once: their creates queue together and share a group commit."""
        if len(request.items) > MAX_BATCH:
            raise InvalidArgument(f"at most {MAX_BATCH} workflows in one CreateWorkflows", reason="BATCH_TOO_LARGE")
        user = await caller(self.identity, context)
        request_ids = list(request.request_ids) + [""] * (len(request.items) - len(request.request_ids))
        results = await asyncio.gather(*(self._create_item(user, item, request_id)
                                         for item, request_id in zip(request.items, request_ids, strict=False)))
        return workflow_service_pb2.CreateWorkflowsResponse(results=results)

    async def _create_item(self, user: UserRow, item: workflow_service_pb2.CreateWorkflowRequest,
                           request_id: str) -> workflow_service_pb2.CreateWorkflowResult:
        started = time.perf_counter()
        try:
            workflow = await self.create(user, item)
        except Exception as err:  # one item's failure is that item's answer, as its own call's would be
            if not isinstance(err, ComfyfleetError):
                log.exception("CreateWorkflows: item %s failed", item.id)
                err = ComfyfleetError("internal error")
            log_item(CREATE_METHOD, err, time.perf_counter() - started, request_id=request_id, workflow_id=item.id)
            return workflow_service_pb2.CreateWorkflowResult(error_status=status_proto_for(err).SerializeToString())
        log_item(CREATE_METHOD, None, time.perf_counter() - started, request_id=request_id, workflow_id=workflow.id)
        return workflow_service_pb2.CreateWorkflowResult(workflow=workflow)

    @maps_domain_errors
    async def GetWorkflow(
        self, request: workflow_service_pb2.GetWorkflowRequest, context: Context
    ) -> workflow_service_pb2.GetWorkflowResponse:
        user = await caller(self.identity, context)
        return workflow_service_pb2.GetWorkflowResponse(workflow=await self.workflows.get(user, request.id))

    @maps_domain_errors
    async def ListWorkflows(
        self, request: workflow_service_pb2.ListWorkflowsRequest, context: Context
    ) -> workflow_service_pb2.ListWorkflowsResponse:
        user = await caller(self.identity, context)
        items, total = await self.workflows.list(user, request)
        return workflow_service_pb2.ListWorkflowsResponse(workflows=items, total=total)

    @maps_domain_errors
    async def CancelWorkflow(
        self, request: workflow_service_pb2.CancelWorkflowRequest, context: Context
    ) -> workflow_service_pb2.CancelWorkflowResponse:
        user = await caller(self.identity, context)
        return workflow_service_pb2.CancelWorkflowResponse(workflow=await self.workflows.cancel(user, request.id))

    @maps_domain_errors
    async def RerunWorkflow(
        self, request: workflow_service_pb2.RerunWorkflowRequest, context: Context
    ) -> workflow_service_pb2.RerunWorkflowResponse:
        user = await caller(self.identity, context)
        return workflow_service_pb2.RerunWorkflowResponse(workflow=await self.workflows.rerun(user, request))

    @maps_domain_errors
    async def DeleteWorkflow(
        self, request: workflow_service_pb2.DeleteWorkflowRequest, context: Context
    ) -> workflow_service_pb2.DeleteWorkflowResponse:
        user = await caller(self.identity, context)
        await self.workflows.delete(user, request.id)
        return workflow_service_pb2.DeleteWorkflowResponse()

    @maps_domain_errors
    async def WatchWorkflow(
        self, request: workflow_service_pb2.WatchWorkflowRequest, context: Context
    ) -> AsyncIterator[workflow_service_pb2.WatchWorkflowResponse]:
        user = await caller(self.identity, context)
        async for item in self.workflows.watch(user, request, lambda: context.send_initial_metadata(WATCH_READY)):
            yield item


class UserServicer(user_service_pb2_grpc.UserServiceServicer):
    def __init__(self, identity: IdentityStore, limits: Limits | None = None) -> None:
        self.identity = identity
        self.limits = limits

    @maps_domain_errors
    async def GetUser(
        self, request: user_service_pb2.GetUserRequest, context: Context
    ) -> user_service_pb2.GetUserResponse:
        user = await caller(self.identity, context)
        response = user_service_pb2.GetUserResponse(user=user_pb(user))
        if request.include_limits and self.limits is not None:
            for name, (maximum, used) in (await self.limits.usage(user)).items():
                limit = getattr(response.limits, name)
                limit.max = maximum
                if used is not None:
                    limit.used = used
        return response
