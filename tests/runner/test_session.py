"""The scheduler session against a fake RunnerSessionService on a real grpc.aio server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from comfyfleet.runner.v1 import runner_session_service_pb2 as pb
from comfyfleet.runner.v1 import runner_session_service_pb2_grpc as pb_grpc

from services.common.comfy_schemas import NodeSchema
from services.runner import events
from services.runner.comfyui_watch import ComfyUIFacts
from services.runner.config import Backoff
from services.runner.outbox import Outbox, WorkflowKey
from services.runner.session import RunnerIdentity, RunnerSession, SessionSettings, reconnect_delay
from tests.runner.conftest import running_session
from tests.runner.fakes import FakeScheduler, GrpcServer, eventually


@dataclass
class Handler:
    holding: list[WorkflowKey] = field(default_factory=list)
    assigned: list[pb.Assignment] = field(default_factory=list)
    cancelled: list[WorkflowKey] = field(default_factory=list)
    abandoned: list[set[WorkflowKey]] = field(default_factory=list)
    drained: bool = False
    handed_back: list[str] = field(default_factory=list)

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

    async def hand_back_unstarted(self, reason: str) -> None:
        self.handed_back.append(reason)


class Readiness:
    """ComfyUI's side of the session: answers with `facts`; `lose(reason)` ends the session."""

    def __init__(self) -> None:
        self.facts_now = ComfyUIFacts("0.3.64", "ab" * 32, {"SaveImage": NodeSchema("SaveImage", (), (), True),
                                                          "EmptyImage": NodeSchema("EmptyImage", (), ("IMAGE",),
                                                                                   False)})
        self.answering = asyncio.Event()
        self.answering.set()
        self._lost: asyncio.Queue[str] = asyncio.Queue()

    def lose(self, reason: str) -> None:
        self._lost.put_nowait(reason)

    async def facts(self) -> ComfyUIFacts:
        await self.answering.wait()
        return self.facts_now

    async def lost(self, said: ComfyUIFacts) -> str:
        return await self._lost.get()


@dataclass
class Setup:
    scheduler: FakeScheduler
    server: GrpcServer
    handler: Handler
    outbox: Outbox
    session: RunnerSession
    readiness: Readiness


@pytest.fixture
async def setup() -> AsyncIterator[Setup]:
    scheduler = FakeScheduler(heartbeat_s=0.1)
    server = GrpcServer(lambda s: pb_grpc.add_RunnerSessionServiceServicer_to_server(scheduler, s))
    await server.start()
    handler = Handler()
    outbox = Outbox()
    readiness = Readiness()
    session = RunnerSession(
        server.address,
        RunnerIdentity(token="tok", name="gpu-1", tags=("a", "b"), slots=2),
        handler,
        outbox,
        readiness,
        SessionSettings(backoff=Backoff(base_s=0.05, cap_s=0.2), welcome_timeout_s=2.0),
    )
    async with running_session(session, server):
        yield Setup(scheduler, server, handler, outbox, session, readiness)


async def test_hello_welcome_heartbeats_and_events(setup: Setup) -> None:
    s = setup
    await eventually(lambda: s.session.connected.is_set(), what="welcome")
    (hello,) = s.scheduler.hellos
    assert (hello.runner_token, hello.name, list(hello.tags), hello.slots) == ("tok", "gpu-1", ["a", "b"], 2)
    assert (hello.comfyui_version, hello.object_info_digest, list(hello.held)) == ("0.3.64", "ab" * 32, [])
    assert list(hello.node_classes) == ["EmptyImage", "SaveImage"]
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
    # (sent after wf's: it may still be on its way when wf's has arrived)
    await eventually(lambda: s.scheduler.kinds("done") == ["completed"], what="the event of the finished one")
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


async def test_no_hello_while_comfyui_does_not_answer_and_hello_again_when_it_changes(setup: Setup) -> None:
    s = setup
    await eventually(lambda: s.scheduler.connected, what="connect")
    s.handler.holding.append(("wf", 1))
    # ComfyUI stays unreachable: the session ends and no Hello goes out meanwhile (no work comes).
    s.readiness.answering.clear()
    s.readiness.lose("ComfyUI unreachable for 5 s: runner unready")
    await eventually(lambda: not s.scheduler.connected, what="the session to end")
    assert s.handler.handed_back == ["ComfyUI unreachable for 5 s: runner unready"]
    await asyncio.sleep(0.4)  # several reconnect backoffs long
    assert len(s.scheduler.hellos) == 1 and not s.session.connected.is_set()
    # ComfyUI is back with another node set: Hello again, with what it runs now and what is held.
    s.readiness.facts_now = ComfyUIFacts("0.3.65", "cd" * 32, {"KSampler": NodeSchema("KSampler", (), ("LATENT",),
                                                                                    False)})
    s.readiness.answering.set()
    await eventually(lambda: len(s.scheduler.hellos) == 2, what="Hello again")
    hello = s.scheduler.hellos[1]
    assert (hello.comfyui_version, hello.object_info_digest) == ("0.3.65", "cd" * 32)
    assert list(hello.node_classes) == ["KSampler"]
    assert [(h.workflow_id, h.attempt) for h in hello.held] == [("wf", 1)]


@pytest.mark.parametrize(("attempt", "jitter", "holding", "lease_s", "expected"), [
    (0, 0.5, False, 8.0, 0.5),  # 0.5 * min(30, 1 * 2**0)
    (5, 0.5, False, 8.0, 15.0),  # 0.5 * min(30, 1 * 2**5): nothing held, the backoff as it is
    (5, 0.5, True, 8.0, 2.0),  # holding work: at most 8 / 4, back before the lease ends
    (0, 0.5, True, 8.0, 0.5),  # a shorter backoff stays as it is
    (5, 0.5, True, 0.0, 15.0),  # no lease known: the backoff
])
def test_reconnect_delay_stays_within_a_quarter_lease_while_holding_work(
    attempt: int, jitter: float, holding: bool, lease_s: float, expected: float
) -> None:
    backoff = Backoff(base_s=1.0, cap_s=30.0)
    assert reconnect_delay(backoff, attempt, jitter, holding=holding, lease_s=lease_s) == expected


async def test_a_runner_holding_work_is_back_within_its_lease_whatever_its_backoff() -> None:
    # The scheduler's lease is 1 s; the backoff alone would wait up to 20 s before the first retry.
    scheduler = FakeScheduler(heartbeat_s=0.1, lease_s=1.0)
    server = GrpcServer(lambda s: pb_grpc.add_RunnerSessionServiceServicer_to_server(scheduler, s))
    await server.start()
    handler = Handler(holding=[("wf", 1)])
    session = RunnerSession(server.address, RunnerIdentity(token="tok", name="gpu-1", tags=(), slots=1), handler,
                            Outbox(), Readiness(), SessionSettings(backoff=Backoff(base_s=20.0, cap_s=60.0)))
    async with running_session(session, server):
        await eventually(lambda: len(scheduler.hellos) == 1, what="first hello")
        await server.stop()  # the scheduler restarts
        await eventually(lambda: not session.connected.is_set(), what="disconnect")
        await asyncio.sleep(0.5)
        await server.start()
        restarted = asyncio.get_running_loop().time()
        await eventually(lambda: len(scheduler.hellos) == 2, timeout_s=3.0, what="hello within the lease")
        assert asyncio.get_running_loop().time() - restarted < 1.0
        assert [(h.workflow_id, h.attempt) for h in scheduler.hellos[1].held] == [("wf", 1)]
