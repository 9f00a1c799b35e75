"""In-memory collaborators of the runner, served by real grpc.aio servers on port 0.

- `FakeScheduler`: RunnerSessionService. Answers Hello with Welcome, sends what a test puts
  in `send`, records every Hello, heartbeat and event; dedupes events by runner_seq like the
  real scheduler does. `drop()` aborts the open stream.
- `MemoryStorage`: StorageService Put/GetObject over a dict.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from comfyfleet.runner.v1 import runner_event_pb2
from comfyfleet.runner.v1 import runner_session_service_pb2 as pb
from comfyfleet.runner.v1 import runner_session_service_pb2_grpc as pb_grpc
from comfyfleet.storage.v1 import object_pb2, storage_service_pb2, storage_service_pb2_grpc
from google.protobuf import duration_pb2

from services.common.grpc_server import SERVER_OPTIONS


async def eventually(predicate: Callable[[], Any], timeout_s: float = 5.0, what: str = "condition") -> Any:
    """Polls `predicate` until it is truthy; returns its value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def eventually_async(predicate: Callable[[], Awaitable[Any]], timeout_s: float = 5.0, what: str = "it") -> Any:
    """`eventually` for an async predicate."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        value = await predicate()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@dataclass
class _Stream:
    outbound: asyncio.Queue[pb.ConnectResponse | None] = field(default_factory=asyncio.Queue)


class FakeScheduler(pb_grpc.RunnerSessionServiceServicer):
    def __init__(self, *, heartbeat_s: float = 0.2, lease_s: float = 5.0) -> None:
        self.heartbeat_s = heartbeat_s
        self.lease_s = lease_s
        self.hellos: list[pb.Hello] = []
        self.raw_events: list[runner_event_pb2.RunnerEvent] = []
        self.heartbeats: list[int] = []
        self.abandon_next: list[tuple[str, int]] = []
        self._applied: dict[tuple[str, int], int] = {}
        self.seq_gaps: list[tuple[tuple[str, int], int, int]] = []
        self.applied_events: list[runner_event_pb2.RunnerEvent] = []
        self._stream: _Stream | None = None
        self.stream_ended = asyncio.Event()

    # -- what tests use ------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._stream is not None

    def send(self, message: pb.ConnectResponse) -> None:
        assert self._stream is not None, "no runner connected"
        self._stream.outbound.put_nowait(message)

    def assign(self, assignment: pb.Assignment) -> None:
        self.send(pb.ConnectResponse(assignment=assignment))

    def cancel(self, workflow_id: str, attempt: int = 1) -> None:
        self.send(pb.ConnectResponse(cancel=pb.Cancel(workflow_id=workflow_id, attempt=attempt)))

    def drop(self) -> None:
        """Ends the open stream with UNAVAILABLE (as a scheduler going away would)."""
        if self._stream is not None:
            self._stream.outbound.put_nowait(None)

    def kinds(self, workflow_id: str) -> list[str]:
        """Event kinds of a workflow as the scheduler applied them (repeats dropped)."""
        return [e.WhichOneof("kind") or "" for e in self.applied_events if e.workflow_id == workflow_id]

    def events(self, workflow_id: str, kind: str) -> list[Any]:
        return [getattr(e, kind) for e in self.applied_events if e.workflow_id == workflow_id and e.HasField(kind)]

    def terminal(self, workflow_id: str) -> str | None:
        for kind in reversed(self.kinds(workflow_id)):
            if kind in ("completed", "failed", "invalid", "cancelled", "handed_back"):
                return kind
        return None

    # -- the service ---------------------------------------------------------------------------

    async def Connect(
        self, request_iterator: AsyncIterator[pb.ConnectRequest], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.ConnectResponse]:
        requests = request_iterator.__aiter__()
        first = await requests.__anext__()
        assert first.WhichOneof("message") == "hello", first
        self.hellos.append(first.hello)
        stream = _Stream()
        self._stream = stream
        self.stream_ended.clear()
        welcome = pb.Welcome(
            runner_id="runner-1",
            lease=duration_pb2.Duration(seconds=int(self.lease_s), nanos=int(self.lease_s % 1 * 1e9)),
            heartbeat_interval=duration_pb2.Duration(
                seconds=int(self.heartbeat_s), nanos=round(self.heartbeat_s % 1 * 1e9)
            ),
            abandon=[pb.HeldWorkflow(workflow_id=w, attempt=a) for w, a in self.abandon_next],
            takes_event_batches=True,
        )
        self.abandon_next = []
        yield pb.ConnectResponse(welcome=welcome)
        reader = asyncio.create_task(self._read(requests))
        try:
            while True:
                getter = asyncio.create_task(stream.outbound.get())
                done, _ = await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    return  # the runner half-closed
                message = getter.result()
                if message is None:
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "scheduler going away")
                yield message
        finally:
            reader.cancel()
            if self._stream is stream:
                self._stream = None
            self.stream_ended.set()

    async def _read(self, requests: AsyncIterator[pb.ConnectRequest]) -> None:
        async for request in requests:
            kind = request.WhichOneof("message")
            if kind == "heartbeat":
                self.heartbeats.append(request.heartbeat.in_flight)
            elif kind == "event":
                self._arrived(request.event)
            elif kind == "events":  # several at once, as the real scheduler takes them
                for event in request.events.events:
                    self._arrived(event)

    def _arrived(self, event: runner_event_pb2.RunnerEvent) -> None:
        self.raw_events.append(event)
        key = (event.workflow_id, event.attempt)
        if event.runner_seq > self._applied.get(key, 0):
            if event.runner_seq != self._applied.get(key, 0) + 1:
                self.seq_gaps.append((key, self._applied.get(key, 0), event.runner_seq))
            self._applied[key] = event.runner_seq
            self.applied_events.append(event)


class MemoryStorage(storage_service_pb2_grpc.StorageServiceServicer):
    def __init__(self) -> None:
        self.objects: dict[str, tuple[bytes, str]] = {}

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> object_pb2.ObjectRef:
        self.objects[key] = (data, content_type)
        return self.ref(key)

    def ref(self, key: str) -> object_pb2.ObjectRef:
        data, content_type = self.objects[key]
        return object_pb2.ObjectRef(
            key=key, size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest(), content_type=content_type
        )

    async def PutObject(
        self, request_iterator: AsyncIterator[storage_service_pb2.PutObjectRequest], context: Any
    ) -> storage_service_pb2.PutObjectResponse:
        header: storage_service_pb2.PutObjectHeader | None = None
        chunks: list[bytes] = []
        finished = False
        async for request in request_iterator:
            if request.HasField("header"):
                header = request.header
            elif request.HasField("finish"):
                assert request.finish.size_bytes == sum(map(len, chunks))
                finished = True
            else:
                assert len(request.chunk) <= 1024 * 1024
                chunks.append(request.chunk)
        assert header is not None
        if not finished:  # like storage: a stream without its finish stores nothing
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "PutObject stream ended without a finish")
        self.objects[header.key] = (b"".join(chunks), header.content_type or "application/octet-stream")
        return storage_service_pb2.PutObjectResponse(object=self.ref(header.key))

    async def PutObjectBytes(
        self, request: storage_service_pb2.PutObjectBytesRequest, context: Any
    ) -> storage_service_pb2.PutObjectBytesResponse:
        assert len(request.data) <= 1024 * 1024
        key, content_type = request.header.key, request.header.content_type or "application/octet-stream"
        self.objects[key] = (request.data, content_type)
        return storage_service_pb2.PutObjectBytesResponse(object=self.ref(key))

    async def GetObject(
        self, request: storage_service_pb2.GetObjectRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[storage_service_pb2.GetObjectResponse]:
        if request.key not in self.objects:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no object {request.key}")
        data, _ = self.objects[request.key]
        yield storage_service_pb2.GetObjectResponse(object=self.ref(request.key))
        for start in range(0, len(data), 64 * 1024):
            yield storage_service_pb2.GetObjectResponse(chunk=data[start : start + 64 * 1024])


class GrpcServer:
    """A grpc.aio server on 127.0.0.1 that can be stopped and started again on the same port."""

    def __init__(self, register: Callable[[grpc.aio.Server], None]) -> None:
        self._register = register
        self._server: grpc.aio.Server | None = None
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        server = grpc.aio.server(options=SERVER_OPTIONS)  # the services' own (keepalive from idle clients)
        self._register(server)
        self.port = server.add_insecure_port(f"127.0.0.1:{self.port}")
        await server.start()
        self._server = server

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=None)
            self._server = None
