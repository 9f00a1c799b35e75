"""Many SSE subscribers of one workflow on one gateway: one WatchWorkflow stream shared by
all of them, and a subscriber that stops reading is dropped without slowing the others.

The scheduler here is a live fake: an event log that grows while the test publishes, and a
WatchWorkflow that honours `after_seq` (stored events, then live ones) like the real one.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import httpx
from comfyfleet.scheduler.v1 import workflow_pb2, workflow_service_pb2
from grpc.aio import ServicerContext

from services.common.grpc_server import WATCH_READY
from tests.gateway.conftest import AUTH, Stack
from tests.gateway.fakes import FakeScheduler, make_workflow, ts

WF = "0b5cf5e2-6f1e-4c1a-9d57-3f3b1f4f0a11"
Watch = workflow_service_pb2.WatchWorkflowResponse
STALL = 1.0


class LiveScheduler(FakeScheduler):
    """FakeScheduler whose WatchWorkflow follows a growing log of WF's events."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[workflow_pb2.WorkflowEvent] = []
        self.published_at: dict[int, float] = {}
        self._grew = asyncio.Event()
        self.workflows[WF] = make_workflow(WF, status=workflow_pb2.WORKFLOW_STATUS_RUNNING, last_seq=0)

    def publish(self, *, message: str = "", final: bool = False) -> int:
        seq = len(self.log) + 1
        if final:
            wf = make_workflow(WF, status=workflow_pb2.WORKFLOW_STATUS_COMPLETED, last_seq=seq)
            event = workflow_pb2.WorkflowEvent(workflow_id=WF, seq=seq, time=ts(seq),
                                               status=workflow_pb2.StatusEvent(workflow=wf))
        else:
            event = workflow_pb2.WorkflowEvent(workflow_id=WF, seq=seq, time=ts(seq), log=workflow_pb2.LogEvent(
                level=workflow_pb2.LOG_LEVEL_INFO, message=message or f"event {seq}"))
        self.log.append(event)
        self.workflows[WF].last_seq = seq
        if final:
            self.workflows[WF].status = workflow_pb2.WORKFLOW_STATUS_COMPLETED
        self.published_at[seq] = time.monotonic()
        self._grew.set()
        self._grew = asyncio.Event()
        return seq

    async def WatchWorkflow(
        self, request: workflow_service_pb2.WatchWorkflowRequest, context: ServicerContext[Any, Any]
    ) -> AsyncIterator[Watch]:
        self.watch_requests.append(request)
        await context.send_initial_metadata(WATCH_READY)  # checked (workflow_service.proto)
        cursor = request.after_seq
        if cursor == 0 and not request.from_start:
            yield Watch(snapshot=self.workflows[WF])
            if self.workflows[WF].status == workflow_pb2.WORKFLOW_STATUS_COMPLETED:
                return
            cursor = len(self.log)
        while True:
            grew = self._grew
            if cursor >= len(self.log) and self.workflows[WF].status == workflow_pb2.WORKFLOW_STATUS_COMPLETED:
                return  # resuming at the end of a finished workflow
            while cursor < len(self.log):
                event = self.log[cursor]
                cursor += 1
                yield Watch(event=event)
                if event.WhichOneof("kind") == "status":
                    return
            await grew.wait()


async def publish_steadily(scheduler: LiveScheduler, count: int, per_second: float, size: int) -> None:
    for _ in range(count - 1):
        scheduler.publish(message="x" * size)
        await asyncio.sleep(1 / per_second)
    scheduler.publish(final=True)


async def read_ids(reply: httpx.Response, arrivals: dict[int, float] | None = None) -> list[int]:
    """The `id:` of each frame until the stream ends (cleanly or cut by the server)."""
    ids: list[int] = []
    try:
        async for line in reply.aiter_lines():
            if line.startswith("id: "):
                ids.append(int(line[4:]))
                if arrivals is not None:
                    arrivals[ids[-1]] = time.monotonic()
    except httpx.RemoteProtocolError:
        pass  # dropped by the server: the chunked body ends without its last chunk
    return ids


async def test_subscribers_of_one_workflow_share_one_watch(
    make_stack: Callable[..., AbstractAsyncContextManager[Stack]],
) -> None:
    scheduler = LiveScheduler()
    async with make_stack(scheduler) as stack:
        scheduler.publish()
        url = f"/v1/workflow/{WF}/subscribe"
        async with stack.client.stream("GET", url, headers=AUTH) as first:  # snapshot, then live
            assert first.status_code == 200
            others = [await stack.client.send(stack.client.build_request("GET", url, headers={**AUTH, **h}),
                                              stream=True)
                      for h in ({}, {"Last-Event-ID": "1"}, {"Last-Event-ID": "0"}, {})]
            try:
                for _ in range(5):
                    scheduler.publish()
                scheduler.publish(final=True)
                bodies = [await r.aread() for r in [first, *others]]
            finally:
                for r in others:
                    await r.aclose()
        async with stack.client.stream("GET", url, headers=AUTH) as finished:
            bodies.append(await finished.aread())
    texts = [b.decode() for b in bodies]
    tail = texts[0].split("id: 2\n", 1)[1]
    # One stream from the scheduler for the subscribers whose cursor it covers (the one from
    # Last-Event-ID 0 needs event 1, older than the shared feed, and gets a watch of its own);
    # everyone got every event after its cursor, byte for byte the same frames.
    assert [(r.after_seq, r.from_start) for r in scheduler.watch_requests[:2]] == [(0, False), (0, True)]
    assert texts[0].startswith("retry: 3000\n\nid: 1\nevent: snapshot\n")
    assert texts[1].startswith("retry: 3000\n\nid: 1\nevent: snapshot\n") and texts[1].endswith(tail)
    assert texts[2] == "retry: 3000\n\nid: 2\n" + tail
    assert "id: 1\nevent: log\n" in texts[3] and texts[3].endswith("id: 2\n" + tail)
    assert texts[4] == texts[1]
    assert texts[5].startswith("retry: 3000\n\nid: 7\nevent: snapshot\n"), "finished: snapshot and close"
    assert len(scheduler.watch_requests) == 3
    assert '"status":"completed"' in texts[5] and texts[5].count("\n\n") == 2


async def test_an_old_last_event_id_gets_its_own_watch_from_the_log(
    make_stack: Callable[..., AbstractAsyncContextManager[Stack]],
) -> None:
    scheduler = LiveScheduler()
    async with make_stack(scheduler) as stack:
        url = f"/v1/workflow/{WF}/subscribe"
        async with stack.client.stream("GET", url, headers=AUTH) as live:
            for _ in range(300):  # more than a feed keeps (128)
                scheduler.publish()
            lines = live.aiter_lines()
            live_ids = []
            async for line in lines:  # until the shared feed has moved past event 10 for good
                if line.startswith("id: "):
                    live_ids.append(int(line[4:]))
                    if live_ids[-1] == 300:
                        break
            async with stack.client.stream("GET", url, headers={**AUTH, "Last-Event-ID": "10"}) as old:
                scheduler.publish(final=True)
                old_ids = await read_ids(old)
            live_ids += [int(line[4:]) async for line in lines if line.startswith("id: ")]
    assert old_ids == list(range(11, 302))
    assert live_ids == [0, *range(1, 302)]  # the snapshot (id 0: no event yet), then every event
    assert [r.after_seq for r in scheduler.watch_requests] == [0, 10]


class SilentClient:
    """A subscriber that sends its request and then reads nothing, with a 4 KiB receive
    buffer set before connecting (so the kernel holds little for it); `read_ids()` later
    reads whatever the server sent, until the server closes the connection."""

    def __init__(self, base_url: str, path: str, headers: dict[str, str]) -> None:
        host, port = base_url.removeprefix("http://").split(":")
        self.address = (host, int(port))
        lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", *(f"{k}: {v}" for k, v in headers.items())]
        self.request = ("\r\n".join(lines) + "\r\n\r\n").encode()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.setblocking(False)

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.sock_connect(self.sock, self.address)
        await loop.sock_sendall(self.sock, self.request)

    async def read_ids(self) -> list[int]:
        loop = asyncio.get_running_loop()
        raw = bytearray()
        while chunk := await loop.sock_recv(self.sock, 65536):
            raw += chunk
        self.sock.close()
        head, _, body = bytes(raw).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        text = bytearray()
        while body:  # chunked transfer coding, possibly cut off in the middle of a chunk
            size_line, _, body = body.partition(b"\r\n")
            size = int(size_line, 16)
            text += body[:size]
            body = body[size + 2:]
        frames = text.decode().split("\n\n")[:-1]  # only complete frames
        return [int(line[4:]) for frame in frames for line in frame.split("\n") if line.startswith("id: ")]


class ServerErrors(logging.Handler):
    """Records what uvicorn logs at ERROR (such as a response it had to cut off itself)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


async def test_a_stalled_subscriber_is_dropped_and_a_fast_one_keeps_receiving_in_time(
    make_stack: Callable[..., AbstractAsyncContextManager[Stack]],
) -> None:
    server_errors = ServerErrors()
    await stall_and_resume(make_stack, server_errors)
    assert server_errors.messages == [], "the stalled client's response was ended cleanly"


async def stall_and_resume(make_stack: Callable[..., AbstractAsyncContextManager[Stack]],
                           server_errors: logging.Handler) -> None:
    scheduler = LiveScheduler()
    # 8 MB of frames at 100 a second: more than the kernel buffers for a socket (up to 4 MiB
    # on the sending side here) and the server's 64 KiB, so writes to the silent client block.
    count, size = 400, 20_000
    async with make_stack(scheduler, sse_stall_seconds=STALL, sse_buffer_frames=10_000) as stack:  # the stall decides
        uvicorn_log = logging.getLogger("uvicorn.error")  # configured (handlers reset) by the stack's start
        uvicorn_log.addHandler(server_errors)
        url = f"/v1/workflow/{WF}/subscribe"
        resume = {**AUTH, "Last-Event-ID": "0"}
        slow = SilentClient(stack.base_url, url, resume)
        await slow.open()
        async with stack.client.stream("GET", url, headers=resume) as fast:
            arrivals: dict[int, float] = {}
            reader = asyncio.create_task(read_ids(fast, arrivals))
            started = time.monotonic()
            await publish_steadily(scheduler, count, per_second=100, size=size)
            publishing = time.monotonic() - started
            fast_ids = await asyncio.wait_for(reader, 10)
        slow_ids = await asyncio.wait_for(slow.read_ids(), 10)  # what was sent to it, then the close
        async with stack.client.stream("GET", url, headers={**AUTH, "Last-Event-ID": str(slow_ids[-1])}) as again:
            rest = await read_ids(again)
        uvicorn_log.removeHandler(server_errors)

    assert fast_ids == list(range(1, count + 1))
    latency = sorted(arrivals[seq] - scheduler.published_at[seq] for seq in fast_ids)
    assert latency[-1] < 0.5, f"the fast subscriber waited {latency[-1]:.3f} s for an event"
    assert publishing < count / 100 + 2, "publishing was slowed down"
    # The slow one got a prefix of the events and was cut off well before the end...
    assert slow_ids == list(range(1, len(slow_ids) + 1)) and len(slow_ids) < count * 3 // 4, slow_ids[-1:]
    # ...and resuming with its last id gets exactly the rest.
    assert rest == list(range(slow_ids[-1] + 1, count + 1))
