"""The scheduler in-process on port 0, a storage fake, and a fake runner agent.

`running_scheduler` wires the same objects as `services.scheduler.server.run` (which binds a
fixed address and waits for a signal, so it cannot be reused for port 0): keep the two in step.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from comfyfleet.runner.v1 import runner_event_pb2
from comfyfleet.runner.v1 import runner_session_service_pb2 as session_pb2
from comfyfleet.runner.v1 import runner_session_service_pb2_grpc as session_grpc
from comfyfleet.scheduler.v1 import (
    event_service_pb2_grpc,
    user_service_pb2_grpc,
    workflow_pb2,
    workflow_service_pb2,
    workflow_service_pb2_grpc,
)
from comfyfleet.storage.v1 import storage_service_pb2, storage_service_pb2_grpc

from services.common.errors import ComfyfleetError, from_rpc_error
from services.common.grpc_server import SERVER_OPTIONS
from services.scheduler.bootstrap import ensure_dev_tokens
from services.scheduler.config import Settings
from services.scheduler.db.engine import Database
from services.scheduler.db.event_numbers import UserEventLog
from services.scheduler.db.identity_store import API, IdentityStore
from services.scheduler.db.workflow_store import WorkflowStore
from services.scheduler.event_servicer import EventServicer
from services.scheduler.execution import Execution
from services.scheduler.fleet import Fleet
from services.scheduler.hub import EventHub
from services.scheduler.input_sweeper import InputSweeper
from services.scheduler.session_servicer import RunnerSessionServicer
from services.scheduler.storage_client import StorageClient
from services.scheduler.workflow_servicer import UserServicer, WorkflowServicer
from services.scheduler.workflows import Workflows

LEASE_SECONDS = 1.0
HEARTBEAT_SECONDS = 0.2
WAIT = 5.0  # the longest any single expected message may take


class StorageFake(storage_service_pb2_grpc.StorageServiceServicer):
    """Records DeleteObjects; the scheduler makes no other storage call."""

    def __init__(self) -> None:
        self.deleted_prefixes: list[str] = []
        self._changed = asyncio.Condition()

    async def DeleteObjects(
        self, request: storage_service_pb2.DeleteObjectsRequest, context: Any
    ) -> storage_service_pb2.DeleteObjectsResponse:
        async with self._changed:
            self.deleted_prefixes.append(request.prefix)
            self._changed.notify_all()
        return storage_service_pb2.DeleteObjectsResponse(deleted_count=1)

    async def wait_deleted(self, prefix: str) -> None:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: prefix in self.deleted_prefixes), WAIT)


@dataclass
class Scheduler:
    address: str
    settings: Settings
    identity: IdentityStore
    storage: StorageFake
    dev_token: str
    runner_token: str
    channel: grpc.aio.Channel
    # The scheduler-side runner lifecycle (disable, drain, delete) the runner API calls.
    execution: Execution | None = None
    # The workflow operations behind WorkflowService (to call them as the servicer does).
    ops: Workflows | None = None
    _runners: list[FakeRunner] = field(default_factory=list)

    @property
    def workflows(self) -> Any:
        return workflow_service_pb2_grpc.WorkflowServiceStub(self.channel)

    @property
    def events(self) -> Any:
        return event_service_pb2_grpc.EventServiceStub(self.channel)

    async def new_user_token(self, name: str) -> str:
        user = await self.identity.create_user(name)
        return await self.identity.issue_token(user.id, API)

    def runner(self, name: str, *tags: str, slots: int = 1, token: str | None = None,
               held: Iterable[tuple[str, int]] = ()) -> FakeRunner:
        r = FakeRunner(self.address, self.runner_token if token is None else token, name, tags, slots, held)
        self._runners.append(r)
        return r


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


@contextlib.asynccontextmanager
async def running_scheduler(tmp: Path, database_url: str | None = None) -> AsyncIterator[Scheduler]:
    """`database_url` defaults to a SQLite file in `tmp` (tests/postgres passes a Postgres one)."""
    storage_fake = StorageFake()
    storage_server = grpc.aio.server(options=SERVER_OPTIONS)
    storage_grpc_port = storage_server.add_insecure_port("127.0.0.1:0")
    storage_service_pb2_grpc.add_StorageServiceServicer_to_server(storage_fake, storage_server)
    await storage_server.start()

    settings = Settings(
        listen="127.0.0.1:0",
        database_url=database_url or f"sqlite+aiosqlite:///{tmp}/s.db",
        storage_address=f"127.0.0.1:{storage_grpc_port}",
        lease_seconds=LEASE_SECONDS,
        heartbeat_seconds=HEARTBEAT_SECONDS,
        bootstrap_dir=str(tmp),
    )
    # -- as in server.run ---------------------------------------------------------------------
    db = Database(settings.database_url)
    await db.migrate()
    identity = IdentityStore(db)
    assert settings.bootstrap_path is not None
    await ensure_dev_tokens(identity, settings.bootstrap_path)
    store = WorkflowStore(db)
    hub = EventHub()
    fleet = Fleet()
    storage = StorageClient(settings.storage_address)
    sweeper = InputSweeper(storage)
    execution = Execution(settings, store, hub, fleet, finished=sweeper.finished)
    workflows = Workflows(store, identity, hub, fleet, placement=execution, finished=sweeper.finished,
                          storage=storage)
    sessions = RunnerSessionServicer(settings, identity, store, fleet, execution)
    await sessions.expire_orphans_after_start()
    placement = asyncio.create_task(execution.run_placement(), name="placement")
    execution.kick()

    server = grpc.aio.server(options=SERVER_OPTIONS)
    workflow_service_pb2_grpc.add_WorkflowServiceServicer_to_server(WorkflowServicer(identity, workflows), server)
    user_service_pb2_grpc.add_UserServiceServicer_to_server(UserServicer(identity), server)
    event_service_pb2_grpc.add_EventServiceServicer_to_server(EventServicer(identity, UserEventLog(db), hub), server)
    session_grpc.add_RunnerSessionServiceServicer_to_server(sessions, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    # ------------------------------------------------------------------------------------------
    address = f"127.0.0.1:{port}"
    channel = grpc.aio.insecure_channel(address)
    scheduler = Scheduler(
        address=address,
        settings=settings,
        identity=identity,
        storage=storage_fake,
        dev_token=(tmp / "dev-token").read_text().strip(),
        runner_token=(tmp / "runner-token").read_text().strip(),
        channel=channel,
        execution=execution,
        ops=workflows,
    )
    try:
        yield scheduler
    finally:
        for r in scheduler._runners:
            await r.drop()
        await channel.close()
        # as serve() and on_stop do
        await sessions.close()
        await server.stop(1)
        placement.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await placement
        await sessions.close()
        await sweeper.close()
        await storage.close()
        await db.close()
        await storage_server.stop(None)


# -- a runner agent, as far as the session protocol goes ------------------------------------------


class FakeRunner:
    """Opens RunnerSessionService.Connect, heartbeats, and sends the events a test tells it to."""

    def __init__(self, address: str, token: str, name: str, tags: Iterable[str], slots: int,
                 held: Iterable[tuple[str, int]]) -> None:
        self.address = address
        self.hello = session_pb2.Hello(
            runner_token=token, name=name, tags=list(tags), slots=slots, comfyui_version="0.3.40",
            object_info_digest="sha256:test",
            held=[session_pb2.HeldWorkflow(workflow_id=w, attempt=a) for w, a in held],
        )
        self.inbox: asyncio.Queue[session_pb2.ConnectResponse | ComfyfleetError | None] = asyncio.Queue()
        self._outbox: asyncio.Queue[session_pb2.ConnectRequest | None] = asyncio.Queue()
        self._seq: dict[tuple[str, int], int] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._channel: grpc.aio.Channel | None = None
        self._call: Any = None
        self.ended = asyncio.Event()

    async def connect(self) -> session_pb2.Welcome:
        self._channel = grpc.aio.insecure_channel(self.address)
        stub = session_grpc.RunnerSessionServiceStub(self._channel)
        self._outbox.put_nowait(session_pb2.ConnectRequest(hello=self.hello))
        self._call = stub.Connect(self._requests())
        self._tasks.append(asyncio.create_task(self._read()))
        first = await self.next()
        assert first.WhichOneof("message") == "welcome", first
        self._tasks.append(asyncio.create_task(self._beat()))
        return first.welcome

    async def _requests(self) -> AsyncIterator[session_pb2.ConnectRequest]:
        while (message := await self._outbox.get()) is not None:
            yield message

    async def _read(self) -> None:
        try:
            async for message in self._call:
                self.inbox.put_nowait(message)
            self.inbox.put_nowait(None)
        except grpc.aio.AioRpcError as err:
            self.inbox.put_nowait(None if err.code() == grpc.StatusCode.CANCELLED else from_rpc_error(err))
        finally:
            self.ended.set()

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS / 2)
            self._outbox.put_nowait(session_pb2.ConnectRequest(heartbeat=session_pb2.Heartbeat()))

    async def next(self) -> session_pb2.ConnectResponse:
        """The next message down; raises the server's error, or AssertionError when the stream ended."""
        item = await asyncio.wait_for(self.inbox.get(), WAIT)
        if isinstance(item, ComfyfleetError):
            raise item
        assert item is not None, "the session ended"
        return item

    async def assignment(self) -> session_pb2.Assignment:
        message = await self.next()
        assert message.WhichOneof("message") == "assignment", message
        return message.assignment

    async def nothing_for(self, seconds: float) -> None:
        """Asserts that no message arrives for `seconds`."""
        try:
            item = await asyncio.wait_for(self.inbox.get(), seconds)
        except TimeoutError:
            return
        raise AssertionError(f"expected nothing, got {item}")

    def send(self, workflow_id: str, attempt: int, *, runner_seq: int | None = None, **kind: Any) -> int:
        """Sends one event (e.g. queued=Queued(...)); runner_seq counts 1, 2, 3 per attempt unless given."""
        key = (workflow_id, attempt)
        if runner_seq is None:
            runner_seq = self._seq.get(key, 0) + 1
        self._seq[key] = max(self._seq.get(key, 0), runner_seq)
        event = runner_event_pb2.RunnerEvent(workflow_id=workflow_id, attempt=attempt, runner_seq=runner_seq, **kind)
        self._outbox.put_nowait(session_pb2.ConnectRequest(event=event))
        return runner_seq

    def continue_seq(self, workflow_id: str, attempt: int, last: int) -> None:
        """After a reconnect: carry on counting from `last`."""
        self._seq[(workflow_id, attempt)] = last

    async def close(self) -> None:
        """Ends the session cleanly (half-close) and waits until the scheduler has ended it too:
        by then every event sent before has been applied."""
        self._stop_beat()
        self._outbox.put_nowait(None)
        await asyncio.wait_for(self.ended.wait(), WAIT)
        await self._shutdown()

    async def drop(self) -> None:
        """The connection breaks: no goodbye."""
        self._stop_beat()
        if self._call is not None:
            self._call.cancel()
        await self._shutdown()

    def _stop_beat(self) -> None:
        for task in self._tasks[1:]:
            task.cancel()

    async def _shutdown(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._channel is not None:
            await self._channel.close()
            self._channel = None


# -- watching ---------------------------------------------------------------------------------------

def status_name(status: int) -> str:
    """WORKFLOW_STATUS_QUEUED -> "queued", as the public API spells it."""
    return workflow_pb2.WorkflowStatus.Name(status).removeprefix("WORKFLOW_STATUS_").lower()


def summary(event: workflow_pb2.WorkflowEvent) -> tuple[int, str, str]:
    """(seq, kind, what) of an event, as a user reading the stream would describe it."""
    kind = event.WhichOneof("kind")
    what = {
        "status": lambda: status_name(event.status.workflow.status),
        "log": lambda: event.log.message,
        "executing": lambda: event.executing.node_id,
        "progress": lambda: f"{event.progress.node_id} {event.progress.value}/{event.progress.max}",
        "output": lambda: event.output.output.object.key,
    }[kind or ""]()
    return event.seq, kind or "", what


@dataclass
class Watch:
    """A WatchWorkflow stream read in the background until it ends."""

    responses: list[workflow_service_pb2.WatchWorkflowResponse] = field(default_factory=list)
    arrived: asyncio.Condition = field(default_factory=asyncio.Condition)
    task: asyncio.Task[None] | None = None
    finished: bool = False

    @property
    def events(self) -> list[workflow_pb2.WorkflowEvent]:
        """Every event received, whether one per message or several (`batch`)."""
        events: list[workflow_pb2.WorkflowEvent] = []
        for r in self.responses:
            kind = r.WhichOneof("message")
            if kind == "event":
                events.append(r.event)
            elif kind == "events":
                events.extend(r.events.events)
        return events

    @property
    def seen(self) -> list[tuple[int, str, str]]:
        return [summary(e) for e in self.events]

    async def until(self, kind: str, what: str) -> int:
        """Waits for an event; returns its seq."""
        def found() -> int | None:
            return next((seq for seq, k, w in self.seen if (k, w) == (kind, what)), None)

        async with self.arrived:
            await asyncio.wait_for(self.arrived.wait_for(lambda: found() is not None or self.finished), WAIT)
        seq = found()
        assert seq is not None, f"the stream ended without {kind} {what}: {self.seen}"
        return seq

    async def stop(self) -> None:
        """Hangs up (a client going away)."""
        assert self.task is not None
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)

    async def end(self) -> list[tuple[int, str, str]]:
        """Waits for the server to end the stream; returns what was seen."""
        assert self.task is not None
        await asyncio.wait_for(asyncio.shield(self.task), WAIT)
        return self.seen


def watch(scheduler: Scheduler, workflow_id: str, *, after_seq: int = 0, from_start: bool = False,
          token: str | None = None, batch: bool = False) -> Watch:
    w = Watch()
    request = workflow_service_pb2.WatchWorkflowRequest(id=workflow_id, after_seq=after_seq, from_start=from_start,
                                                        batch=batch)

    async def read() -> None:
        call = scheduler.workflows.WatchWorkflow(request, metadata=bearer(token or scheduler.dev_token))
        try:
            async for response in call:
                async with w.arrived:
                    w.responses.append(response)
                    w.arrived.notify_all()
        finally:
            async with w.arrived:
                w.finished = True
                w.arrived.notify_all()

    w.task = asyncio.create_task(read())
    return w
