"""Runner events in batches: the outbox's queued prefix up to a count and a size, and what the
session writes (one Events message for the events queued together when the Welcome says
takes_event_batches, one Event per message when it does not), against a recording
RunnerSessionService on a real grpc.aio server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from comfyfleet.runner.v1 import runner_session_service_pb2 as pb
from comfyfleet.runner.v1 import runner_session_service_pb2_grpc as pb_grpc
from google.protobuf import duration_pb2

from services.runner import events
from services.runner.config import Backoff
from services.runner.outbox import Outbox
from services.runner.session import RunnerIdentity, RunnerSession, SessionSettings
from tests.runner.conftest import running_session
from tests.runner.fakes import GrpcServer, eventually
from tests.runner.test_session import Handler, Readiness

pytestmark = pytest.mark.timeout(20)


# -- the outbox ----------------------------------------------------------------------------------


def test_next_batch_takes_the_queued_prefix_up_to_a_count_and_leaves_it_queued() -> None:
    outbox = Outbox()
    for _ in range(5):
        outbox.emit(("a", 1), events.uploaded())
    batch = outbox.next_batch(3, 1 << 20)
    assert [e.runner_seq for e in batch] == [1, 2, 3]
    assert outbox.queued_count() == 5  # until written
    for event in batch:
        outbox.written(event)
    assert [e.runner_seq for e in outbox.next_batch(3, 1 << 20)] == [4, 5]


def test_next_batch_stops_before_the_event_that_would_pass_the_size_but_takes_one_at_least() -> None:
    outbox = Outbox()
    sizes = [outbox.emit(("a", 1), events.warning(text)).ByteSize() for text in ("x" * 100, "y" * 100, "z" * 500)]
    assert [e.runner_seq for e in outbox.next_batch(64, sum(sizes))] == [1, 2, 3]
    assert [e.runner_seq for e in outbox.next_batch(64, sum(sizes) - 1)] == [1, 2]
    assert [e.runner_seq for e in outbox.next_batch(64, sizes[0] + sizes[1] - 1)] == [1]
    assert [e.runner_seq for e in outbox.next_batch(64, 1)] == [1]  # larger than the limit: alone
    assert Outbox().next_batch(64, 1 << 20) == []


# -- the session ---------------------------------------------------------------------------------


class RecordingScheduler(pb_grpc.RunnerSessionServiceServicer):
    """Answers Hello with a Welcome (with takes_event_batches or without, as an older scheduler
    does) and records every event message as it arrives: ("event", [seq]) or ("events", [seqs])."""

    def __init__(self, *, takes_event_batches: bool) -> None:
        self.takes_event_batches = takes_event_batches
        self.hellos = 0
        self.messages: list[tuple[str, list[int]]] = []

    async def Connect(
        self, request_iterator: AsyncIterator[pb.ConnectRequest], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.ConnectResponse]:
        requests = request_iterator.__aiter__()
        assert (await requests.__anext__()).WhichOneof("message") == "hello"
        self.hellos += 1
        yield pb.ConnectResponse(welcome=pb.Welcome(
            runner_id="runner-1", lease=duration_pb2.Duration(seconds=5),
            heartbeat_interval=duration_pb2.Duration(seconds=5), takes_event_batches=self.takes_event_batches))
        async for request in requests:
            kind = request.WhichOneof("message")
            if kind == "event":
                self.messages.append(("event", [request.event.runner_seq]))
            elif kind == "events":
                self.messages.append(("events", [e.runner_seq for e in request.events.events]))

    def seqs(self) -> list[int]:
        return [seq for _, seqs in self.messages for seq in seqs]


@contextlib.asynccontextmanager
async def session_against(scheduler: RecordingScheduler, *, linger_s: float = 0.0
                          ) -> AsyncIterator[tuple[GrpcServer, Outbox, RunnerSession]]:
    server = GrpcServer(lambda s: pb_grpc.add_RunnerSessionServiceServicer_to_server(scheduler, s))
    await server.start()
    outbox = Outbox()
    settings = SessionSettings(backoff=Backoff(base_s=0.05, cap_s=0.2), linger_s=linger_s)
    session = RunnerSession(server.address, RunnerIdentity(token="tok", name="gpu-1", tags=(), slots=1), Handler(),
                            outbox, Readiness(), settings)
    async with running_session(session, server):
        await eventually(lambda: session.connected.is_set(), what="welcome")
        yield server, outbox, session


@pytest.fixture
async def batching() -> AsyncIterator[tuple[RecordingScheduler, GrpcServer, Outbox, RunnerSession]]:
    scheduler = RecordingScheduler(takes_event_batches=True)
    async with session_against(scheduler) as (server, outbox, session):
        yield scheduler, server, outbox, session


async def test_events_queued_together_go_up_as_one_message_and_a_lone_event_as_an_event(
    batching: tuple[RecordingScheduler, GrpcServer, Outbox, RunnerSession],
) -> None:
    scheduler, _, outbox, _ = batching
    for event in (events.uploaded(), events.queued("p", 0), events.running("p")):
        outbox.emit(("wf", 1), event)
    await eventually(lambda: len(scheduler.seqs()) == 3, what="three events")
    outbox.emit(("wf", 1), events.completed())
    await eventually(lambda: len(scheduler.seqs()) == 4, what="the fourth")
    assert scheduler.messages == [("events", [1, 2, 3]), ("event", [4])]
    assert outbox.queued_count() == 0


async def test_events_emitted_apart_wait_for_each_other_but_a_runs_end_does_not() -> None:
    scheduler = RecordingScheduler(takes_event_batches=True)
    async with session_against(scheduler, linger_s=30.0) as (_, outbox, _):
        outbox.emit(("wf", 1), events.uploaded())
        await asyncio.sleep(0.1)  # (POST /prompt, then its websocket messages)
        outbox.emit(("wf", 1), events.queued("p", 0))
        outbox.emit(("wf", 1), events.running("p"))
        await asyncio.sleep(0.1)
        assert scheduler.messages == []  # waiting for company, up to linger_s
        outbox.emit(("wf", 1), events.completed())  # ends the run: written now, with the rest
        await eventually(lambda: len(scheduler.seqs()) == 4, what="the run's events", timeout_s=5.0)
        assert scheduler.messages == [("events", [1, 2, 3, 4])]


async def test_a_lone_event_goes_up_once_its_linger_is_over() -> None:
    scheduler = RecordingScheduler(takes_event_batches=True)
    async with session_against(scheduler, linger_s=0.3) as (_, outbox, _):
        outbox.emit(("wf", 1), events.uploaded())
        await asyncio.sleep(0.1)
        assert scheduler.messages == []
        await eventually(lambda: scheduler.messages == [("event", [1])], what="the lone event")


async def test_an_older_scheduler_gets_one_event_per_message() -> None:
    scheduler = RecordingScheduler(takes_event_batches=False)
    async with session_against(scheduler) as (_, outbox, _):
        for event in (events.uploaded(), events.queued("p", 0), events.running("p")):
            outbox.emit(("wf", 1), event)
        await eventually(lambda: len(scheduler.seqs()) == 3, what="three events")
        assert scheduler.messages == [("event", [1]), ("event", [2]), ("event", [3])]


async def test_after_a_reconnect_the_events_written_within_the_window_go_again_in_one_batch(
    batching: tuple[RecordingScheduler, GrpcServer, Outbox, RunnerSession],
) -> None:
    scheduler, server, outbox, session = batching
    outbox.emit(("wf", 1), events.uploaded())
    outbox.emit(("wf", 1), events.queued("p", 0))
    await eventually(lambda: scheduler.messages == [("events", [1, 2])], what="the first batch")
    await server.stop()  # the scheduler restarts; an event is queued meanwhile
    await eventually(lambda: not session.connected.is_set(), what="disconnect")
    outbox.emit(("wf", 1), events.running("p"))
    await server.start()
    await eventually(lambda: scheduler.hellos == 2 and len(scheduler.messages) == 2, what="the resent outbox")
    assert scheduler.messages[1] == ("events", [1, 2, 3])  # the repeats first, the scheduler drops them
