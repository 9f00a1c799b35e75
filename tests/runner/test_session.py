"""The scheduler session against a fake RunnerSessionService on a real grpc.aio server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from comfyfleet.runner.v1 import runner_session_service_pb2 as pb
from comfyfleet.runner.v1 import runner_session_service_pb2_grpc as pb_grpc

from services.runner import events
from services.runner.config import Backoff
from services.runner.outbox import Outbox, WorkflowKey
from services.runner.session import RunnerIdentity, RunnerSession, SessionSettings
from tests.runner.fakes import FakeScheduler, GrpcServer, eventually


@dataclass
class Handler:
    holding: list[WorkflowKey] = field(default_factory=list)
    assigned: list[pb.Assignment] = field(default_factory=list)
    cancelled: list[WorkflowKey] = field(default_factory=list)
    abandoned: list[set[WorkflowKey]] = field(default_factory=list)
    drained: bool = False

    def held(self) -> list[WorkflowKey]:
        return list(self.holding)

    def in_flight(self) -> int:
        return len(self.holding)

    def assign(self, assignment: pb.Assignment) -> None:
        self.assigned.append(assignment)

    def cancel(self, key: WorkflowKey) -> None:
        self.cancelled.append(key)

    def abandon(self, keys: set[WorkflowKey]) -> None:
        self.abandoned.append(keys)

    def drain(self) -> None:
        self.drained = True


async def facts() -> tuple[str, str]:
    return ("0.3.64", "ab" * 32)


@dataclass
class Setup:
    scheduler: FakeScheduler
    server: GrpcServer
    handler: Handler
    outbox: Outbox
    session: RunnerSession


@pytest.fixture
async def setup() -> AsyncIterator[Setup]:
    scheduler = FakeScheduler(heartbeat_s=0.1)
    server = GrpcServer(lambda s: pb_grpc.add_RunnerSessionServiceServicer_to_server(scheduler, s))
    await server.start()
    handler = Handler()
    outbox = Outbox()
    session = RunnerSession(
        server.address,
        RunnerIdentity(token="tok", name="gpu-1", tags=("a", "b"), slots=2),
        handler,
        outbox,
        facts,
        SessionSettings(backoff=Backoff(base_s=0.05, cap_s=0.2), welcome_timeout_s=2.0),
    )
    task = asyncio.create_task(session.run())
    yield Setup(scheduler, server, handler, outbox, session)
    await session.stop(1.0)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await session.close()
    await server.stop()


async def test_hello_welcome_heartbeats_and_events(setup: Setup) -> None:
    s = setup
    await eventually(lambda: s.session.connected.is_set(), what="welcome")
    (hello,) = s.scheduler.hellos
    assert (hello.runner_token, hello.name, list(hello.tags), hello.slots) == ("tok", "gpu-1", ["a", "b"], 2)
    assert (hello.comfyui_version, hello.object_info_digest, list(hello.held)) == ("0.3.64", "ab" * 32, [])
    assert s.session.runner_id == "runner-1"
    s.handler.holding.append(("wf", 1))
    await eventually(lambda: 1 in s.scheduler.heartbeats, what="a heartbeat with in_flight=1")
    s.outbox.emit(("wf", 1), events.uploaded())
    s.outbox.emit(("wf", 1), events.queued("p", 0))
    await eventually(lambda: s.scheduler.kinds("wf") == ["uploaded", "queued"], what="events")
    assert [e.runner_seq for e in s.scheduler.raw_events] == [1, 2]


async def test_assignment_cancel_and_drain_reach_the_handler(setup: Setup) -> None:
    s = setup
    await eventually(lambda: s.scheduler.connected, what="connect")
    s.scheduler.assign(pb.Assignment(workflow_id="wf", attempt=1, prompt_json="{}"))
    s.scheduler.cancel("wf", 1)
    s.scheduler.send(pb.ConnectResponse(drain=pb.Drain()))
    await eventually(lambda: s.handler.drained, what="drain")
    assert [a.workflow_id for a in s.handler.assigned] == ["wf"]
    assert s.handler.cancelled == [("wf", 1)]


async def test_reconnects_with_held_and_resends_the_outbox(setup: Setup) -> None:
    s = setup
    await eventually(lambda: s.scheduler.connected, what="connect")
    s.handler.holding.append(("wf", 1))
    s.outbox.emit(("wf", 1), events.uploaded())
    await eventually(lambda: s.scheduler.kinds("wf") == ["uploaded"], what="first event")

    # The scheduler restarts: nothing listens for a while; events pile up meanwhile.
    await s.server.stop()
    await eventually(lambda: not s.session.connected.is_set(), what="disconnect")
    s.outbox.emit(("wf", 1), events.queued("p", 0))
    s.outbox.emit(("done", 1), events.completed())  # finished while disconnected: not yet delivered
    await asyncio.sleep(0.3)
    await s.server.start()

    await eventually(lambda: len(s.scheduler.hellos) == 2, what="second hello")
    held = {(h.workflow_id, h.attempt) for h in s.scheduler.hellos[1].held}
    assert held == {("wf", 1), ("done", 1)}
    await eventually(lambda: s.scheduler.kinds("wf") == ["uploaded", "queued"], what="resent outbox")
    assert s.scheduler.kinds("done") == ["completed"]
    # The event written just before the break was sent again; the scheduler dropped the repeat.
    assert [e.runner_seq for e in s.scheduler.raw_events if e.workflow_id == "wf"] == [1, 1, 2]
    assert s.scheduler.seq_gaps == []


async def test_stream_dropped_by_the_scheduler_reconnects(setup: Setup) -> None:
    s = setup
    await eventually(lambda: s.scheduler.connected, what="connect")
    s.scheduler.abandon_next = [("old", 3)]
    s.outbox.emit(("old", 3), events.running("p"))
    s.scheduler.drop()
    await eventually(lambda: len(s.scheduler.hellos) == 2, what="reconnect")
    await eventually(lambda: s.handler.abandoned == [{("old", 3)}], what="abandon")
    await asyncio.sleep(0.1)
    assert s.scheduler.kinds("old") in ([], ["running"])  # sent before the drop at most


async def test_stop_half_closes_and_ends_the_run(setup: Setup) -> None:
    s = setup
    await eventually(lambda: s.scheduler.connected, what="connect")
    await s.session.stop(2.0)
    await asyncio.wait_for(s.scheduler.stream_ended.wait(), 2.0)
    assert len(s.scheduler.hellos) == 1
