"""The gateway's view of the scheduler: users and workflows, called on behalf of a token.

Every call carries the client's `Authorization` header as gRPC metadata `authorization`;
the scheduler decides whether it is valid. `Scheduler` is the small interface the routes
use; `GrpcScheduler` implements it over a grpc.aio channel. Failed calls raise domain errors
(services.gateway.errors.from_grpc).
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import grpc
from comfyfleet.scheduler.v1 import (
    event_service_pb2,
    event_service_pb2_grpc,
    runner_pb2,
    runner_service_pb2_grpc,
    template_service_pb2_grpc,
    user_pb2,
    user_service_pb2,
    user_service_pb2_grpc,
    webhook_service_pb2_grpc,
    workflow_pb2,
    workflow_service_pb2,
    workflow_service_pb2_grpc,
)

from services.common.grpc_server import WATCH_READY_KEY
from services.common.grpc_telemetry import outgoing_metadata
from services.gateway.create_batcher import CreateBatcher, Metadata
from services.gateway.errors import from_grpc

RPC_TIMEOUT_SECONDS = 10.0
# CreateWorkflow commits a transaction and may validate a large graph.
CREATE_TIMEOUT_SECONDS = 30.0
# check_token: a token the scheduler accepted this long ago is not asked about again.
TOKEN_CHECK_SECONDS = 5.0
TOKEN_CHECK_SIZE = 1024

Workflow = workflow_pb2.Workflow
Runner = runner_pb2.Runner
R = TypeVar("R")
WatchMessage = workflow_service_pb2.WatchWorkflowResponse
EventsMessage = event_service_pb2.WatchEventsResponse


class WorkflowWatch(Protocol):
    """A running WatchWorkflow call."""

    async def started(self) -> None: ...
    async def next(self) -> WatchMessage | None: ...
    def cancel(self) -> None: ...


class Scheduler(Protocol):
    """What the gateway needs from the scheduler; `auth` is the caller's Authorization header."""

    async def get_user(self, auth: str) -> user_pb2.User: ...
    async def check_token(self, auth: str) -> None: ...
    async def get_user_with_limits(self, auth: str) -> user_service_pb2.GetUserResponse: ...
    async def create_workflow(self, auth: str, request: workflow_service_pb2.CreateWorkflowRequest) -> Workflow: ...
    async def get_workflow(self, auth: str, workflow_id: str) -> Workflow: ...
    async def list_workflows(
        self, auth: str, request: workflow_service_pb2.ListWorkflowsRequest
    ) -> workflow_service_pb2.ListWorkflowsResponse: ...
    async def cancel_workflow(self, auth: str, workflow_id: str) -> Workflow: ...
    async def rerun_workflow(self, auth: str, request: workflow_service_pb2.RerunWorkflowRequest) -> Workflow: ...
    async def delete_workflow(self, auth: str, workflow_id: str) -> None: ...
    def watch_workflow(self, auth: str, workflow_id: str, *, after_seq: int, from_start: bool) -> WorkflowWatch: ...
    def watch_events(self, auth: str, *, after_user_seq: int, replay: bool, max_replay: int) -> EventsWatch: ...
    async def runners(self, auth: str, method: str, request: Any) -> Any:
        """A RunnerService method by name (CreateRunner, ListRunners, ...): its response."""
    async def templates(self, auth: str, method: str, request: Any) -> Any:
        """A TemplateService method by name (CreateTemplate, RunTemplate, ...): its response."""
    async def webhooks(self, auth: str, method: str, request: Any) -> Any:
        """A WebhookService method by name (CreateWebhook, ListWebhookDeliveries, ...): its response."""


def _metadata(auth: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", auth), *outgoing_metadata())  # + x-request-id (edge.py)


class GrpcWatch:
    """WatchWorkflow over gRPC: `next()` gives each message, None after the stream ends."""

    def __init__(
        self,
        call: grpc.aio.UnaryStreamCall[workflow_service_pb2.WatchWorkflowRequest, WatchMessage],
    ) -> None:
        self._call = call

    async def started(self) -> None:
        """Returns once the scheduler has checked the caller and the workflow (the stream's
        initial metadata); raises what it refused the watch with."""
        try:
            metadata = await self._call.initial_metadata()
            ready = any(key == WATCH_READY_KEY for key, _ in metadata or ())
            if not ready and self._call.done() and await self._call.code() != grpc.StatusCode.OK:
                await self._call.read()  # refused before any metadata: raises its error
        except grpc.aio.AioRpcError as err:
            raise from_grpc(err, "scheduler") from None

    async def next(self) -> WatchMessage | None:
        try:
            message = await self._call.read()
        except grpc.aio.AioRpcError as err:
            raise from_grpc(err, "scheduler") from None
        return message if isinstance(message, WatchMessage) else None

    def cancel(self) -> None:
        self._call.cancel()


class EventsWatch(Protocol):
    """A running WatchEvents call (the fleet-wide stream)."""

    async def next(self) -> EventsMessage | None: ...
    def cancel(self) -> None: ...


class GrpcEventsWatch:
    """EventService.WatchEvents over gRPC: `next()` gives each message, None after the stream ends."""

    def __init__(self, call: grpc.aio.UnaryStreamCall[event_service_pb2.WatchEventsRequest, EventsMessage]) -> None:
        self._call = call

    async def next(self) -> EventsMessage | None:
        try:
            message = await self._call.read()
        except grpc.aio.AioRpcError as err:
            raise from_grpc(err, "scheduler") from None
        return message if isinstance(message, EventsMessage) else None

    def cancel(self) -> None:
        self._call.cancel()


class GrpcScheduler:
    """The scheduler over a grpc.aio channel."""

    def __init__(self, channel: grpc.aio.Channel, *, create_batch: int = 64) -> None:
        self._users = user_service_pb2_grpc.UserServiceStub(channel)
        self._workflows = workflow_service_pb2_grpc.WorkflowServiceStub(channel)
        self._runners = runner_service_pb2_grpc.RunnerServiceStub(channel)
        self._templates = template_service_pb2_grpc.TemplateServiceStub(channel)
        self._webhooks = webhook_service_pb2_grpc.WebhookServiceStub(channel)
        self._events = event_service_pb2_grpc.EventServiceStub(channel)
        self._accepted: OrderedDict[bytes, float] = OrderedDict()  # check_token: digest -> until
        self.creates = CreateBatcher(self._create_one, self._create_many, lambda err: from_grpc(err, "scheduler"),
                                     max_batch=create_batch) if create_batch > 1 else None

    async def templates(self, auth: str, method: str, request: Any) -> Any:
        call: Callable[..., Awaitable[Any]] = getattr(self._templates, method)
        return await _unary(call, request, auth)

    async def runners(self, auth: str, method: str, request: Any) -> Any:
        call: Callable[..., Awaitable[Any]] = getattr(self._runners, method)
        return await _unary(call, request, auth)

    async def webhooks(self, auth: str, method: str, request: Any) -> Any:
        call: Callable[..., Awaitable[Any]] = getattr(self._webhooks, method)
        return await _unary(call, request, auth)

    async def get_user(self, auth: str) -> user_pb2.User:
        try:
            response = await self._users.GetUser(
                user_service_pb2.GetUserRequest(), metadata=_metadata(auth), timeout=RPC_TIMEOUT_SECONDS
            )
        except grpc.aio.AioRpcError as err:
            raise from_grpc(err, "scheduler") from None
        return response.user

    async def check_token(self, auth: str) -> None:
        """401 (from the scheduler) unless it accepts `auth`. A pre-check only: the call that
        follows authenticates again, so a token accepted in the last TOKEN_CHECK_SECONDS is
        not asked about again (a revocation meanwhile still fails that call)."""
        digest = hashlib.sha256(auth.encode()).digest()
        if self._accepted.get(digest, 0.0) > time.monotonic():
            return
        await self.get_user(auth)
        self._accepted[digest] = time.monotonic() + TOKEN_CHECK_SECONDS
        self._accepted.move_to_end(digest)
        while len(self._accepted) > TOKEN_CHECK_SIZE:
            self._accepted.popitem(last=False)

    async def get_user_with_limits(self, auth: str) -> user_service_pb2.GetUserResponse:
        return await _unary(self._users.GetUser, user_service_pb2.GetUserRequest(include_limits=True), auth)

    async def create_workflow(self, auth: str, request: workflow_service_pb2.CreateWorkflowRequest) -> Workflow:
        """CreateWorkflow; concurrent creates of one token go together (create_batcher.py)."""
        if self.creates is not None:
            return await self.creates.create(auth, request)
        try:
            return await self._create_one(request, _metadata(auth))
        except grpc.aio.AioRpcError as err:
            raise from_grpc(err, "scheduler") from None

    async def _create_one(self, request: workflow_service_pb2.CreateWorkflowRequest, metadata: Metadata) -> Workflow:
        response = await self._workflows.CreateWorkflow(request, metadata=metadata, timeout=CREATE_TIMEOUT_SECONDS)
        return response.workflow

    async def _create_many(self, request: workflow_service_pb2.CreateWorkflowsRequest,
                           metadata: Metadata) -> workflow_service_pb2.CreateWorkflowsResponse:
        response: workflow_service_pb2.CreateWorkflowsResponse = await self._workflows.CreateWorkflows(
            request, metadata=metadata, timeout=CREATE_TIMEOUT_SECONDS)
        return response

    async def get_workflow(self, auth: str, workflow_id: str) -> Workflow:
        try:
            response = await self._workflows.GetWorkflow(
                workflow_service_pb2.GetWorkflowRequest(id=workflow_id),
                metadata=_metadata(auth),
                timeout=RPC_TIMEOUT_SECONDS,
            )
        except grpc.aio.AioRpcError as err:
            raise from_grpc(err, "scheduler") from None
        return response.workflow

    async def list_workflows(
        self, auth: str, request: workflow_service_pb2.ListWorkflowsRequest
    ) -> workflow_service_pb2.ListWorkflowsResponse:
        try:
            return await self._workflows.ListWorkflows(
                request, metadata=_metadata(auth), timeout=RPC_TIMEOUT_SECONDS
            )
        except grpc.aio.AioRpcError as err:
            raise from_grpc(err, "scheduler") from None

    async def cancel_workflow(self, auth: str, workflow_id: str) -> Workflow:
        try:
            response = await self._workflows.CancelWorkflow(
                workflow_service_pb2.CancelWorkflowRequest(id=workflow_id),
                metadata=_metadata(auth),
                timeout=RPC_TIMEOUT_SECONDS,
            )
        except grpc.aio.AioRpcError as err:
            raise from_grpc(err, "scheduler") from None
        return response.workflow

    async def rerun_workflow(self, auth: str, request: workflow_service_pb2.RerunWorkflowRequest) -> Workflow:
        try:
            response = await self._workflows.RerunWorkflow(
                request, metadata=_metadata(auth), timeout=CREATE_TIMEOUT_SECONDS
            )
        except grpc.aio.AioRpcError as err:
            raise from_grpc(err, "scheduler") from None
        return response.workflow

    async def delete_workflow(self, auth: str, workflow_id: str) -> None:
        try:
            await self._workflows.DeleteWorkflow(
                workflow_service_pb2.DeleteWorkflowRequest(id=workflow_id),
                metadata=_metadata(auth),
                timeout=CREATE_TIMEOUT_SECONDS,
            )
        except grpc.aio.AioRpcError as err:
            raise from_grpc(err, "scheduler") from None

    def watch_workflow(self, auth: str, workflow_id: str, *, after_seq: int, from_start: bool) -> GrpcWatch:
        request = workflow_service_pb2.WatchWorkflowRequest(
            id=workflow_id, after_seq=after_seq, from_start=from_start, batch=True
        )
        return GrpcWatch(self._workflows.WatchWorkflow(request, metadata=_metadata(auth)))

    def watch_events(self, auth: str, *, after_user_seq: int, replay: bool, max_replay: int) -> GrpcEventsWatch:
        request = event_service_pb2.WatchEventsRequest(
            after_user_seq=after_user_seq, replay=replay, max_replay=max_replay)
        return GrpcEventsWatch(self._events.WatchEvents(request, metadata=_metadata(auth)))


async def _unary(call: Callable[..., Awaitable[R]], request: Any, auth: str) -> R:
    try:
        return await call(request, metadata=_metadata(auth), timeout=RPC_TIMEOUT_SECONDS)
    except grpc.aio.AioRpcError as err:
        raise from_grpc(err, "scheduler") from None
