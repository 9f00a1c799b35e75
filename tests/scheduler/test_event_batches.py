"""Runner events in batches through the whole scheduler: an Events message applies as that many
Event messages in order (one group-commit transaction, each change published), repeats in a
batch are dropped by runner_seq, and a handed_back inside a batch still requeues.

The scheduler in-process; the first test drives it with the runner's own `RunnerSession`, the
others write Events messages of their own through the harness's fake runner agent."""

from __future__ import annotations

import asyncio

import pytest
from comfyfleet.runner.v1 import runner_event_pb2 as ev
from comfyfleet.runner.v1 import runner_session_service_pb2 as session_pb2
from comfyfleet.storage.v1 import object_pb2

from services.runner import events
from services.runner.comfyui_messages import NodeStarted
from services.runner.config import Backoff
from services.runner.outbox import Outbox
from services.runner.session import RunnerIdentity, RunnerSession, SessionSettings
from services.scheduler.db.engine import Database
from tests.runner.fakes import eventually
from tests.runner.test_session import Handler, Readiness

from .harness import FakeRunner, Scheduler, watch
from .test_service import SIMPLE, create, request

pytestmark = pytest.mark.timeout(20)


def database(s: Scheduler) -> Database:
    assert s.execution is not None
    return s.execution.store.db


def send_events(runner: FakeRunner, *batch: ev.RunnerEvent) -> None:
    """Writes one Events message (as `FakeRunner.send` writes one Event)."""
    runner._outbox.put_nowait(session_pb2.ConnectRequest(events=session_pb2.RunnerEvents(events=batch)))


def numbered(workflow_id: str, runner_seq: int, event: ev.RunnerEvent) -> ev.RunnerEvent:
    """`event` of attempt 1 of `workflow_id`, numbered."""
    event.workflow_id, event.attempt, event.runner_seq = workflow_id, 1, runner_seq
    return event


def executing(node_id: str) -> ev.RunnerEvent:
    return events.executing(NodeStarted(node_id, "EmptyLatentImage"))


async def test_a_runners_events_queued_together_commit_in_one_transaction_in_order(scheduler: Scheduler) -> None:
    handler = Handler()
    outbox = Outbox()
    session = RunnerSession(scheduler.address, RunnerIdentity(token=scheduler.runner_token, name="gpu-1", tags=(),
                                                              slots=1),
                            handler, outbox, Readiness(), SessionSettings(backoff=Backoff(base_s=0.05, cap_s=0.2)))
    task = asyncio.create_task(session.run())
    try:
        wf = await create(scheduler, request(SIMPLE))
        (assignment,) = await eventually(lambda: handler.assigned, what="the assignment")
        w = watch(scheduler, wf.id, from_start=True)
        await w.until("log", "assigned to runner gpu-1 (attempt 1)")
        db = database(scheduler)
        batches, batched = db.batches, db.batched
        key = (wf.id, assignment.attempt)
        ref = object_pb2.ObjectRef(key=f"outputs/{wf.id}/9/out_00001_.png", size_bytes=10, sha256="ab",
                                   content_type="image/png")
        for event in (events.running("p"), executing("1"), events.output_stored("9", "out_00001_.png", ref),
                      events.completed()):
            outbox.emit(key, event)
        seen = [s[1:] for s in await w.end()]
        assert seen[seen.index(("status", "running")):] == [
            ("status", "running"), ("executing", "1"), ("output", f"outputs/{wf.id}/9/out_00001_.png"),
            ("status", "completed")]
        assert (db.batches - batches, db.batched - batched) == (1, 4)  # one transaction held the four
    finally:
        await session.stop(1.0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await session.close()


async def test_repeats_in_a_batch_are_dropped_by_runner_seq(scheduler: Scheduler) -> None:
    runner = scheduler.runner("gpu-1")
    await runner.connect()
    wf = await create(scheduler, request(SIMPLE))
    await runner.assignment()
    w = watch(scheduler, wf.id, from_start=True)
    send_events(runner, numbered(wf.id, 1, events.running("p")), numbered(wf.id, 2, executing("1")))
    await w.until("executing", "1")
    # After a reconnect the runner resends what it wrote within the window, then what is new.
    send_events(runner, numbered(wf.id, 1, events.running("p")), numbered(wf.id, 2, executing("1")),
                numbered(wf.id, 3, executing("2")), numbered(wf.id, 4, events.completed()))
    seen = [s[1:] for s in await w.end()]
    assert seen[seen.index(("status", "running")):] == [
        ("status", "running"), ("executing", "1"), ("executing", "2"), ("status", "completed")]


async def test_handed_back_inside_a_batch_requeues_after_the_events_before_it(scheduler: Scheduler) -> None:
    runner = scheduler.runner("gpu-1", slots=2)
    await runner.connect()
    kept = await create(scheduler, request(SIMPLE))
    given_back = await create(scheduler, request(SIMPLE))
    assert {(await runner.assignment()).workflow_id for _ in range(2)} == {kept.id, given_back.id}
    w_kept = watch(scheduler, kept.id, from_start=True)
    w_back = watch(scheduler, given_back.id, from_start=True)
    await w_back.until("log", "assigned to runner gpu-1 (attempt 1)")
    back = ev.RunnerEvent(handed_back=ev.HandedBack(reason="ComfyUI unreachable"))
    send_events(runner, numbered(kept.id, 1, events.running("p1")), numbered(given_back.id, 1, events.running("p2")),
                numbered(given_back.id, 2, back), numbered(kept.id, 2, events.completed()))

    again = await runner.assignment()  # back to placement: the runner has both slots free again
    assert (again.workflow_id, again.attempt) == (given_back.id, 2)
    await w_back.until("log", "assigned to runner gpu-1 (attempt 2)")
    seen = [s[1:] for s in w_back.seen]
    assert seen[seen.index(("status", "running")):] == [
        ("status", "running"), ("log", "runner handed it back (ComfyUI unreachable); requeued after attempt 1"),
        ("status", "accepted"), ("log", "assigned to runner gpu-1 (attempt 2)")]
    assert [s[1:] for s in await w_kept.end()][-1] == ("status", "completed")
    await w_back.stop()
