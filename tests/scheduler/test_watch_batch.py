"""WatchWorkflow with `batch`: the events that are ready together go in one message, the same
events in the same order as one per message, ending at the terminal status; a live event that
does not follow the last one sent is read from the log with what came before it."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from comfyfleet.runner.v1 import runner_event_pb2 as ev
from comfyfleet.scheduler.v1 import workflow_pb2, workflow_service_pb2

from services.scheduler import watch as watch_module
from services.scheduler.hub import EventHub
from services.scheduler.watch import messages, watch

from .harness import Scheduler
from .harness import watch as watch_stream
from .test_service import SIMPLE, create, request

pytestmark = pytest.mark.timeout(20)

Event = workflow_pb2.WorkflowEvent


def log(seq: int, text: str = "line") -> Event:
    return Event(workflow_id="wf", seq=seq, log=workflow_pb2.LogEvent(message=text))


def completed(seq: int) -> Event:
    return Event(workflow_id="wf", seq=seq, status=workflow_pb2.StatusEvent(
        workflow=workflow_pb2.Workflow(status=workflow_pb2.WORKFLOW_STATUS_COMPLETED)))


def shape(message: workflow_service_pb2.WatchWorkflowResponse) -> list[int]:
    """The seqs a message carries."""
    if message.WhichOneof("message") == "events":
        return [e.seq for e in message.events.events]
    return [message.event.seq]


# -- the stream of one workflow, through the scheduler ------------------------------------------


async def test_a_finished_workflows_log_comes_in_one_message_with_batch_and_one_each_without(
        scheduler: Scheduler) -> None:
    runner = scheduler.runner("r")
    await runner.connect()
    workflow = await create(scheduler, request(SIMPLE))
    await runner.assignment()
    runner.send(workflow.id, 1, uploaded=ev.Uploaded())
    runner.send(workflow.id, 1, queued=ev.Queued(prompt_id="p", queue_number=0))
    runner.send(workflow.id, 1, running=ev.Running(prompt_id="p"))
    for value in range(1, 4):
        runner.send(workflow.id, 1, progress=ev.Progress(node_id="1", value=value, max=3))
    runner.send(workflow.id, 1, completed=ev.Completed())
    live = watch_stream(scheduler, workflow.id, batch=True)
    await live.end()

    batched = watch_stream(scheduler, workflow.id, from_start=True, batch=True)
    one_each = watch_stream(scheduler, workflow.id, from_start=True)
    assert await batched.end() == await one_each.end()
    assert [status for _, kind, status in one_each.seen if kind == "status"] == [
        "accepted", "uploaded", "queued", "running", "completed"]
    assert {r.WhichOneof("message") for r in one_each.responses} == {"event"}
    assert [shape(r) for r in batched.responses] == [[e.seq for e in one_each.events]]
    # The live watch saw the same events after its snapshot, some of them together.
    assert live.responses[0].WhichOneof("message") == "snapshot"
    after_snapshot = live.responses[0].snapshot.last_seq
    assert [e.seq for e in live.events] == [e.seq for e in one_each.events if e.seq > after_snapshot]
    await runner.close()


async def test_a_resumed_batch_watch_starts_after_its_cursor_and_ends_at_the_terminal_event(
        scheduler: Scheduler) -> None:
    runner = scheduler.runner("r")
    await runner.connect()
    workflow = await create(scheduler, request(SIMPLE))
    await runner.assignment()
    runner.send(workflow.id, 1, running=ev.Running(prompt_id="p"))
    runner.send(workflow.id, 1, completed=ev.Completed())
    everything = watch_stream(scheduler, workflow.id, from_start=True)
    await everything.end()
    seqs = [e.seq for e in everything.events]
    resumed = watch_stream(scheduler, workflow.id, after_seq=2, batch=True)
    await resumed.end()
    assert [e.seq for e in resumed.events] == [s for s in seqs if s > 2]
    assert len(resumed.responses) == 1
    await runner.close()


# -- the live part, on its own: a real hub, a log held by the test ------------------------------


class Log:
    """What watch() reads from the store: a running workflow and its stored events."""

    def __init__(self, events: list[Event]) -> None:
        self.events = events
        self.reads: list[int] = []

    async def watch_start(
        self, workflow_id: str, user_id: str, after: int | None
    ) -> tuple[Any, list[Any], list[Event]]:
        row = SimpleNamespace(status="running", last_seq=0)
        return row, [], [] if after is None else [e for e in self.events if e.seq > after]

    async def events_after(self, workflow_id: str, after: int, limit: int = 500) -> list[Event]:
        self.reads.append(after)
        return [e for e in self.events if e.seq > after][:limit]


def start(store: Log, hub: EventHub, batch: bool) -> tuple[Any, asyncio.Future[Any]]:
    """The watch, and its first message to come (once the watcher is registered, which is
    before watch_start returns)."""
    req = workflow_service_pb2.WatchWorkflowRequest(id="wf", from_start=True, batch=batch)
    stream = watch(store, hub, "user", req)  # type: ignore[arg-type]
    return stream, asyncio.ensure_future(anext(stream))


async def registered(hub: EventHub) -> None:
    for _ in range(100):
        if hub.watcher_count("wf"):
            return
        await asyncio.sleep(0)
    raise AssertionError("the watch never registered its watcher")


async def test_live_events_published_together_go_in_one_message() -> None:
    hub, store = EventHub(), Log([])
    stream, first = start(store, hub, batch=True)
    await registered(hub)
    store.events = [log(1), log(2), log(3)]
    hub.publish(store.events)
    assert shape(await first) == [1, 2, 3]
    store.events.append(completed(4))
    hub.publish([store.events[-1]])
    assert shape(await anext(stream)) == [4]
    with pytest.raises(StopAsyncIteration):
        await anext(stream)
    assert store.reads == []  # every live event followed the last one: nothing read back


async def test_live_events_after_a_gap_are_read_from_the_log_with_what_came_before() -> None:
    for batch in (True, False):
        hub, store = EventHub(), Log([])
        stream, first = start(store, hub, batch=batch)
        await registered(hub)
        store.events = [log(1), log(2), log(3), completed(4), log(5)]
        hub.publish(store.events[2:4])  # 1 and 2 were published before the watcher joined
        got = [await first] + [m async for m in stream]
        assert [seq for m in got for seq in shape(m)] == [1, 2, 3, 4]  # ends at the terminal event
        assert len(got) == (1 if batch else 4)
        assert store.reads == [0]


async def test_an_overflowed_watcher_sends_what_it_has_then_ends() -> None:
    hub, store = EventHub(capacity=2), Log([])
    stream, first = start(store, hub, batch=True)
    await registered(hub)
    store.events = [log(1), log(2), log(3), log(4)]
    hub.publish(store.events)  # the third one overflows the watcher's queue
    assert shape(await first) == [1, 2]
    with pytest.raises(StopAsyncIteration):
        await anext(stream)


# -- how events are cut into messages -----------------------------------------------------------


def test_messages_hold_at_most_their_count_and_about_their_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    events = [log(seq) for seq in range(1, 601)]
    assert [len(shape(m)) for m in messages(events, batch=True)] == [256, 256, 88]
    assert [len(shape(m)) for m in messages(events[:3], batch=False)] == [1, 1, 1]
    assert list(messages([], batch=True)) == []

    monkeypatch.setattr(watch_module, "MESSAGE_BYTES", 1000)
    big = [log(1, "x" * 600), log(2, "y" * 600), log(3), log(4), log(5, "z" * 5000)]
    assert [shape(m) for m in messages(big, batch=True)] == [[1], [2, 3, 4], [5]]  # an event too big goes alone
