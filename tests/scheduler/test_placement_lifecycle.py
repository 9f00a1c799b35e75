"""Runner lifecycle as placement sees it (disabled, draining, deleted), and the order of service
through the whole scheduler: the scheduler in-process, fake runner agents on real sessions.
The runner API calls `Execution.set_runner_enabled`, `drain_runner` and `delete_runner`;
these tests call them the same way."""

from __future__ import annotations

import asyncio

import pytest
from comfyfleet.runner.v1 import runner_event_pb2 as ev
from comfyfleet.runner.v1 import runner_session_service_pb2 as session_pb2
from comfyfleet.scheduler.v1 import workflow_pb2

from services.scheduler.execution import Execution

from .harness import Scheduler, status_name, watch
from .test_service import SIMPLE, create, get, request

pytestmark = pytest.mark.timeout(20)


def execution(s: Scheduler) -> Execution:
    assert s.execution is not None
    return s.execution


async def test_a_disabled_runner_gets_nothing_new_but_finishes_what_it_holds(scheduler: Scheduler) -> None:
    box = scheduler.runner("box", slots=2)
    box_id = (await box.connect()).runner_id
    first = await create(scheduler, request(SIMPLE))
    assert (await box.assignment()).workflow_id == first.id

    execution(scheduler).set_runner_enabled(box_id, False)
    second = await create(scheduler, request(SIMPLE))
    await box.nothing_for(0.5)  # a free slot, but disabled
    assert (status_name((await get(scheduler, second.id)).status), (await get(scheduler, second.id)).runner_id) == (
        "accepted", "")

    w = watch(scheduler, first.id, from_start=True)
    box.send(first.id, 1, running=ev.Running(prompt_id="p1"))
    box.send(first.id, 1, completed=ev.Completed())
    assert [s[2] for s in await w.end() if s[1] == "status"][-1] == "completed"

    execution(scheduler).set_runner_enabled(box_id, True)
    assert (await box.assignment()).workflow_id == second.id


async def test_a_draining_runner_is_told_so_and_new_work_goes_elsewhere(scheduler: Scheduler) -> None:
    old = scheduler.runner("old", slots=4)
    old_id = (await old.connect()).runner_id
    held = await create(scheduler, request(SIMPLE))
    assert (await old.assignment()).workflow_id == held.id

    assert execution(scheduler).drain_runner(old_id)
    assert (await old.next()).WhichOneof("message") == "drain"
    fresh = await create(scheduler, request(SIMPLE))
    await old.nothing_for(0.5)  # 3 free slots, but draining
    new = scheduler.runner("new")
    await new.connect()
    assert (await new.assignment()).workflow_id == fresh.id

    old.send(held.id, 1, running=ev.Running(prompt_id="p"))
    old.send(held.id, 1, completed=ev.Completed())
    w = watch(scheduler, held.id, from_start=True)
    assert [s[2] for s in await w.end() if s[1] == "status"][-1] == "completed"
    assert not execution(scheduler).drain_runner("not-connected")


async def test_deleting_a_runner_cancels_its_work_on_it_and_sends_it_back_to_placement(scheduler: Scheduler) -> None:
    doomed = scheduler.runner("doomed", slots=2)
    doomed_id = (await doomed.connect()).runner_id
    queued = await create(scheduler, request(SIMPLE))
    running = await create(scheduler, request(SIMPLE))
    got = {(await doomed.assignment()).workflow_id, (await doomed.assignment()).workflow_id}
    assert got == {queued.id, running.id}
    doomed.send(queued.id, 1, queued=ev.Queued(prompt_id="pq", queue_number=1))
    doomed.send(running.id, 1, running=ev.Running(prompt_id="pr"))
    w = watch(scheduler, running.id, from_start=True)
    await w.until("status", "running")

    assert await execution(scheduler).delete_runner(doomed_id) == 2
    cancels = {(await doomed.next()).cancel.workflow_id for _ in range(2)}
    assert cancels == {queued.id, running.id}
    await doomed.ended.wait()  # its session is over

    for wid in (queued.id, running.id):
        wf = await get(scheduler, wid)
        assert (status_name(wf.status), wf.runner_id, wf.attempt) == ("accepted", "", 1)
    heir = scheduler.runner("heir", slots=2)
    await heir.connect()
    again = {(a.workflow_id, a.attempt) for a in [await heir.assignment(), await heir.assignment()]}
    assert again == {(queued.id, 2), (running.id, 2)}
    assert ("log", "runner deleted; requeued after attempt 1") in [s[1:] for s in w.seen]


async def test_a_deletion_does_not_use_up_an_attempt(scheduler: Scheduler) -> None:
    settings = scheduler.settings
    wf = await create(scheduler, request(SIMPLE))
    for attempt in range(1, settings.max_attempts + 2):
        r = scheduler.runner(f"r{attempt}")
        runner_id = (await r.connect()).runner_id
        assert ((a := await r.assignment()).workflow_id, a.attempt) == (wf.id, attempt)
        await execution(scheduler).delete_runner(runner_id)
        row = await get(scheduler, wf.id)
        assert status_name(row.status) == "accepted", "deleted runners never fail a workflow"


async def test_a_runner_that_says_it_is_draining_gets_nothing_new(scheduler: Scheduler) -> None:
    # What a runner agent does on SIGTERM: its heartbeats say draining.
    leaving = scheduler.runner("leaving", slots=2)
    await leaving.connect()
    leaving._outbox.put_nowait(session_pb2.ConnectRequest(heartbeat=session_pb2.Heartbeat(draining=True)))
    await asyncio.sleep(0.3)  # the heartbeat is read
    wf = await create(scheduler, request(SIMPLE))
    await leaving.nothing_for(0.5)
    staying = scheduler.runner("staying")
    await staying.connect()
    assert (await staying.assignment()).workflow_id == wf.id


async def test_the_scheduler_serves_high_then_normal_then_low_and_fifo_within(scheduler: Scheduler) -> None:
    # Created in this order; one runner with one slot then takes them one at a time.
    order = [("n1", workflow_pb2.PRIORITY_NORMAL), ("l1", workflow_pb2.PRIORITY_LOW),
             ("h1", workflow_pb2.PRIORITY_HIGH), ("n2", workflow_pb2.PRIORITY_NORMAL),
             ("h2", workflow_pb2.PRIORITY_HIGH)]
    ids = {}
    for name, priority in order:
        req = request(SIMPLE, name=name)
        req.priority = priority
        ids[(await create(scheduler, req)).id] = name
    box = scheduler.runner("box")
    await box.connect()
    served = []
    for _ in order:
        a = await box.assignment()
        served.append(ids[a.workflow_id])
        box.send(a.workflow_id, a.attempt, running=ev.Running(prompt_id="p"))
        box.send(a.workflow_id, a.attempt, completed=ev.Completed())
    # high (h1, h2 by arrival), normal (n1, n2), low (l1)
    assert served == ["h1", "h2", "n1", "n2", "l1"]


async def test_a_shared_runner_serves_users_fairly_when_their_tier_allows_it(scheduler: Scheduler) -> None:
    bob = await scheduler.new_user_token("bob")
    backlog = [(await create(scheduler, request(SIMPLE, name=f"dev-{i}"))).id for i in range(4)]
    single = (await create(scheduler, request(SIMPLE, name="bob-1"), token=bob)).id
    box = scheduler.runner("box")  # the dev user's runner
    box_id = (await box.connect()).runner_id
    first = await box.assignment()
    assert first.workflow_id == backlog[0]
    await box.nothing_for(0.3)  # not shared yet: bob's workflow has no runner

    # An administrator shares it, and bob's tier allows shared runners.
    execution(scheduler).fleet.sessions[box_id].shared = True
    execution(scheduler).may_use_shared = lambda user_id: True
    served = []
    a = first
    for _ in range(5):
        box.send(a.workflow_id, a.attempt, running=ev.Running(prompt_id="p"))
        box.send(a.workflow_id, a.attempt, completed=ev.Completed())
        if len(served) == 4:
            break
        a = await box.assignment()
        served.append(a.workflow_id)
    # One slot frees at a time. The dev user was served last (backlog[0]), bob never: bob's
    # single workflow goes next, not after the dev user's whole (older) backlog.
    assert served == [single, *backlog[1:]], served
