"""In-memory fakes of the scheduler (UserService, WorkflowService) and StorageService.

Each is served by a real grpc.aio server on port 0 with the standard health service, so
the gateway talks to them exactly as it talks to the real services. They record what they
were asked, and can be told to fail.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import grpc
from comfyfleet.scheduler.v1 import (
    user_pb2,
    user_service_pb2,
    user_service_pb2_grpc,
    workflow_pb2,
    workflow_service_pb2,
    workflow_service_pb2_grpc,
)
from comfyfleet.storage.v1 import object_pb2, storage_service_pb2, storage_service_pb2_grpc
from google.protobuf import timestamp_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.common.errors import (
    ComfyfleetError,
    Conflict,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    TooLarge,
    Unauthenticated,
    status_proto_for,
)
from services.common.grpc_server import SERVER_OPTIONS, WATCH_READY, maps_domain_errors

GOOD_TOKEN = "good-token"
USER_ID = "6f1c2a4e-0000-4000-8000-000000000001"
PUBLIC_URL = "http://gateway.test"
GET_CHUNK_BYTES = 64 * 1024

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]


def ts(seconds: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds)


def make_workflow(
    workflow_id: str, status: int = workflow_pb2.WORKFLOW_STATUS_ACCEPTED, **fields: Any
) -> workflow_pb2.Workflow:
    wf = workflow_pb2.Workflow(
        id=workflow_id, user_id=USER_ID, name="test", status=workflow_pb2.WorkflowStatus.ValueType(status),
        created_at=ts(1_700_000_000),
        updated_at=ts(1_700_000_001), attempt=1, priority=workflow_pb2.PRIORITY_NORMAL,
    )
    for name, value in fields.items():
        target = getattr(wf, name)
        if isinstance(value, list):
            target.extend(value)
        elif hasattr(target, "CopyFrom"):
            target.CopyFrom(value)
        else:
            setattr(wf, name, value)
    return wf


def _authenticate(context: Context) -> None:
    metadata = dict(context.invocation_metadata() or ())
    if metadata.get("authorization") != f"Bearer {GOOD_TOKEN}":
        raise Unauthenticated("invalid or expired token", reason="INVALID_TOKEN")


@dataclass
class FakeScheduler(user_service_pb2_grpc.UserServiceServicer, workflow_service_pb2_grpc.WorkflowServiceServicer):
    """Workflows in a dict; watch streams play a script per workflow id."""

    workflows: dict[str, workflow_pb2.Workflow] = field(default_factory=dict)
    created: list[workflow_service_pb2.CreateWorkflowRequest] = field(default_factory=list)
    list_requests: list[workflow_service_pb2.ListWorkflowsRequest] = field(default_factory=list)
    create_error: ComfyfleetError | None = None
    batches: list[int] = field(default_factory=list)  # CreateWorkflows calls: items in each
    create_gate: asyncio.Event | None = None  # set: creates wait for it after being recorded
    get_user_calls: int = 0
    get_workflow_calls: int = 0
    # Watch scripts: workflow id -> messages; None = wait until the client cancels,
    # a float = sleep that long, an error = end the stream with it.
    watch_scripts: dict[str, list[workflow_service_pb2.WatchWorkflowResponse | float | ComfyfleetError | None]] = field(
        default_factory=dict
    )
    watch_requests: list[workflow_service_pb2.WatchWorkflowRequest] = field(default_factory=list)
    watch_cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    # Called by GetWorkflow before anything else (to make it fail unexpectedly).
    on_get: Callable[[], None] | None = None

    def reset(self) -> None:
        """Back to a fresh fake (the server keeps serving this same object)."""
        self.__init__()  # type: ignore[misc]

    @maps_domain_errors
    async def GetUser(
        self, request: user_service_pb2.GetUserRequest, context: Context
    ) -> user_service_pb2.GetUserResponse:
        self.get_user_calls += 1
        _authenticate(context)
        return user_service_pb2.GetUserResponse(user=user_pb2.User(
            id=USER_ID, name="Ada", email="ada@example.com", tier="pro",
            created_at=ts(1_600_000_000), updated_at=ts(1_600_000_000),
        ))

    @maps_domain_errors
    async def CreateWorkflow(
        self, request: workflow_service_pb2.CreateWorkflowRequest, context: Context
    ) -> workflow_service_pb2.CreateWorkflowResponse:
        _authenticate(context)
        self.created.append(request)
        if self.create_gate is not None:
            await self.create_gate.wait()
        if self.create_error is not None:
            raise self.create_error
        wf = make_workflow(request.id, name=request.name, tags=list(request.tags), priority=request.priority,
                           workflow_json=request.workflow_json)
        self.workflows[wf.id] = wf
        return workflow_service_pb2.CreateWorkflowResponse(workflow=wf)

    @maps_domain_errors
    async def CreateWorkflows(
        self, request: workflow_service_pb2.CreateWorkflowsRequest, context: Context
    ) -> workflow_service_pb2.CreateWorkflowsResponse:
        """Each item as CreateWorkflow takes it (`create_error` refuses every item on its own)."""
        _authenticate(context)
        self.batches.append(len(request.items))
        if self.create_gate is not None:
            await self.create_gate.wait()
        results = []
        for item in request.items:
            self.created.append(item)
            if self.create_error is not None:
                error = status_proto_for(self.create_error).SerializeToString()
                results.append(workflow_service_pb2.CreateWorkflowResult(error_status=error))
                continue
            wf = make_workflow(item.id, name=item.name, tags=list(item.tags), priority=item.priority,
                               workflow_json=item.workflow_json)
            self.workflows[wf.id] = wf
            results.append(workflow_service_pb2.CreateWorkflowResult(workflow=wf))
        return workflow_service_pb2.CreateWorkflowsResponse(results=results)

    def _find(self, workflow_id: str) -> workflow_pb2.Workflow:
        if workflow_id not in self.workflows:
            raise NotFound("workflow not found", reason="WORKFLOW_NOT_FOUND")
        return self.workflows[workflow_id]

    @maps_domain_errors
    async def GetWorkflow(
        self, request: workflow_service_pb2.GetWorkflowRequest, context: Context
    ) -> workflow_service_pb2.GetWorkflowResponse:
        self.get_workflow_calls += 1
        if self.on_get is not None:
            self.on_get()
        _authenticate(context)
        return workflow_service_pb2.GetWorkflowResponse(workflow=self._find(request.id))

    @maps_domain_errors
    async def ListWorkflows(
        self, request: workflow_service_pb2.ListWorkflowsRequest, context: Context
    ) -> workflow_service_pb2.ListWorkflowsResponse:
        _authenticate(context)
        self.list_requests.append(request)
        found = [wf for wf in self.workflows.values()
                 if (not request.status or wf.status == request.status) and (not request.tag or request.tag in wf.tags)]
        found.sort(key=lambda wf: wf.created_at.seconds, reverse=True)
        start = (max(request.page, 1) - 1) * (request.per_page or 10)
        return workflow_service_pb2.ListWorkflowsResponse(
            workflows=found[start:start + (request.per_page or 10)], total=len(found)
        )

    @maps_domain_errors
    async def CancelWorkflow(
        self, request: workflow_service_pb2.CancelWorkflowRequest, context: Context
    ) -> workflow_service_pb2.CancelWorkflowResponse:
        _authenticate(context)
        wf = self._find(request.id)
        if wf.status >= workflow_pb2.WORKFLOW_STATUS_COMPLETED:
            raise Conflict("workflow already finished", reason="WORKFLOW_FINISHED",
                           details=[{"status": "completed"}])
        wf.status = workflow_pb2.WORKFLOW_STATUS_CANCELLED
        return workflow_service_pb2.CancelWorkflowResponse(workflow=wf)

    @maps_domain_errors
    async def WatchWorkflow(
        self, request: workflow_service_pb2.WatchWorkflowRequest, context: Context
    ) -> AsyncIterator[workflow_service_pb2.WatchWorkflowResponse]:
        _authenticate(context)
        self.watch_requests.append(request)
        self._find(request.id)
        await context.send_initial_metadata(WATCH_READY)  # checked (workflow_service.proto)
        try:
            for item in self.watch_scripts.get(request.id, []):
                if item is None:
                    await asyncio.Event().wait()
                elif isinstance(item, float):
                    await asyncio.sleep(item)
                elif isinstance(item, ComfyfleetError):
                    raise item
                else:
                    yield item
        except asyncio.CancelledError:
            self.watch_cancelled.set()
            raise


def sign(key: str, expires_unix: int) -> str:
    return hashlib.sha256(f"secret:{key}:{expires_unix}".encode()).hexdigest()


@dataclass
class StoredObject:
    data: bytes
    content_type: str
    chunks: int  # how many PutObject chunk messages it arrived in


@dataclass
class FakeStorage(storage_service_pb2_grpc.StorageServiceServicer):
    """Objects in a dict; URLs signed with a sha256 of a secret, key and expiry."""

    objects: dict[str, StoredObject] = field(default_factory=dict)
    deleted_prefixes: list[str] = field(default_factory=list)
    # Keys of uploads the client cancelled ("" when it cancelled before the header was read).
    aborted_uploads: list[str] = field(default_factory=list)
    headers: list[storage_service_pb2.PutObjectHeader] = field(default_factory=list)

    def reset(self) -> None:
        """Back to a fresh fake (the server keeps serving this same object)."""
        self.__init__()  # type: ignore[misc]

    @maps_domain_errors
    async def PutObject(
        self, request_iterator: AsyncIterator[storage_service_pb2.PutObjectRequest], context: Context
    ) -> storage_service_pb2.PutObjectResponse:
        header: storage_service_pb2.PutObjectHeader | None = None
        data = bytearray()
        chunks = 0
        finished = False
        try:
            async for message in request_iterator:
                if header is None:
                    if not message.HasField("header"):
                        raise InvalidArgument("header first", reason="HEADER_FIRST")
                    header = message.header
                    self.headers.append(header)
                    continue
                if message.HasField("finish"):
                    if message.finish.size_bytes != len(data):
                        raise InvalidArgument("size mismatch", reason="PUT_SIZE_MISMATCH")
                    finished = True
                    break
                data += message.chunk
                chunks += 1
                assert len(message.chunk) <= 1024 * 1024
                if header.max_size_bytes and len(data) > header.max_size_bytes:
                    raise TooLarge("object too large", reason="OBJECT_TOO_LARGE")
            # grpc.aio quirk: when the client cancels while this handler waits for the next
            # message, the iterator may simply end, as if the client had half-closed. The
            # cancellation surfaces at the next await, so commit only after one.
            await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            self.aborted_uploads.append(header.key if header else "")
            raise
        assert header is not None
        if not finished:  # like storage: a stream without its finish stores nothing
            raise InvalidArgument("no finish", reason="PUT_FINISH_MISSING")
        content_type = header.content_type or "application/octet-stream"
        self.objects[header.key] = StoredObject(bytes(data), content_type, chunks)
        return storage_service_pb2.PutObjectResponse(object=self.ref(header.key))

    def ref(self, key: str) -> object_pb2.ObjectRef:
        stored = self.objects[key]
        return object_pb2.ObjectRef(key=key, size_bytes=len(stored.data), content_type=stored.content_type,
                                    sha256=hashlib.sha256(stored.data).hexdigest())

    @maps_domain_errors
    async def GetObject(
        self, request: storage_service_pb2.GetObjectRequest, context: Context
    ) -> AsyncIterator[storage_service_pb2.GetObjectResponse]:
        if request.HasField("signature"):
            signature = request.signature
            if signature.expires_unix < time.time() or signature.signature != sign(request.key, signature.expires_unix):
                raise PermissionDenied("invalid or expired signature", reason="BAD_SIGNATURE")
        if request.key not in self.objects:
            raise NotFound("object not found", reason="OBJECT_NOT_FOUND")
        yield storage_service_pb2.GetObjectResponse(object=self.ref(request.key))
        data = self.objects[request.key].data
        for offset in range(0, len(data), GET_CHUNK_BYTES):
            yield storage_service_pb2.GetObjectResponse(chunk=data[offset:offset + GET_CHUNK_BYTES])

    @maps_domain_errors
    async def DeleteObjects(
        self, request: storage_service_pb2.DeleteObjectsRequest, context: Context
    ) -> storage_service_pb2.DeleteObjectsResponse:
        self.deleted_prefixes.append(request.prefix)
        doomed = [key for key in self.objects if request.prefix and key.startswith(request.prefix)]
        for key in [*doomed, *request.keys]:
            self.objects.pop(key, None)
        return storage_service_pb2.DeleteObjectsResponse(deleted_count=len(doomed))

    @maps_domain_errors
    async def PresignObject(
        self, request: storage_service_pb2.PresignObjectRequest, context: Context
    ) -> storage_service_pb2.PresignObjectResponse:
        expires = int(time.time()) + 300
        url = f"{PUBLIC_URL}/v1/objects/{request.key}?expires={expires}&signature={sign(request.key, expires)}"
        return storage_service_pb2.PresignObjectResponse(url=url, expires_at=ts(expires))


async def serve(register: Callable[[grpc.aio.Server], None]) -> tuple[grpc.aio.Server, int]:
    """A started grpc.aio server on 127.0.0.1:0 with the health service SERVING, and the
    services' own server options (keepalive pings from an idle client are welcome: with grpc's
    defaults an idle gateway channel is sent GOAWAY too_many_pings after ~a minute)."""
    server = grpc.aio.server(options=SERVER_OPTIONS)
    register(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    return server, port


def add_scheduler(fake: FakeScheduler) -> Callable[[grpc.aio.Server], None]:
    def register(server: grpc.aio.Server) -> None:
        user_service_pb2_grpc.add_UserServiceServicer_to_server(fake, server)
        workflow_service_pb2_grpc.add_WorkflowServiceServicer_to_server(fake, server)
    return register


def add_storage(fake: FakeStorage) -> Callable[[grpc.aio.Server], None]:
    def register(server: grpc.aio.Server) -> None:
        storage_service_pb2_grpc.add_StorageServiceServicer_to_server(fake, server)
    return register
