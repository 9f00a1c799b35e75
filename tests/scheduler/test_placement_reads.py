"""When a placement pass reads the queue: a freed slot reads it only if something may be waiting
(the last pass left work behind, or work was kicked since); otherwise one workflow at a time
would cost a read of an empty queue per completion. A create that finds nothing waiting and a
slot free is placed by its own transaction (tests/scheduler/test_place_on_create.py): no pass."""

from __future__ import annotations

import asyncio

import pytest
from comfyfleet.runner.v1 import runner_event_pb2 as ev

from .harness import Scheduler, watch
from .test_service import SIMPLE, create, request

pytestmark = pytest.mark.timeout(20)


def counted_reads(s: Scheduler) -> list[int]:
    """The size of every batch the scheduler's passes read from now on."""
    execution = s.execution
    assert execution is not None
    real = execution.queue.batch
    sizes: list[int] = []

    async def batch(limit: int) -> list:  # type: ignore[type-arg]
        found = await real(limit)
        sizes.append(len(found))
        return found

    execution.queue.batch = batch  # type: ignore[method-assign]
    return sizes


async def finish(s: Scheduler, runner: object, workflow_id: str) -> None:
    w = watch(s, workflow_id, from_start=True)
    runner.send(workflow_id, 1, running=ev.Running(prompt_id="p"))  # type: ignore[attr-defined]
    runner.send(workflow_id, 1, completed=ev.Completed())  # type: ignore[attr-defined]
    assert [e[2] for e in await w.end() if e[1] == "status"][-1] == "completed"


async def test_a_freed_slot_does_not_read_a_queue_the_last_pass_emptied(scheduler: Scheduler) -> None:
    box = scheduler.runner("box")
    await box.connect()
    await asyncio.sleep(0.2)  # (its connection's pass)
    reads = counted_reads(scheduler)
    for _ in range(3):  # one workflow at a time
        workflow = await create(scheduler, request(SIMPLE))
        assert (await box.assignment()).workflow_id == workflow.id
        await finish(scheduler, box, workflow.id)
        await asyncio.sleep(0.2)  # the pass a freed slot would run
    # nothing waited and the slot was free: each workflow was placed by its own create (no
    # pass, no read), and no completion read the (empty) queue
    assert reads == []


async def test_a_freed_slot_reads_the_queue_when_work_was_left_waiting(scheduler: Scheduler) -> None:
    box = scheduler.runner("box")
    await box.connect()
    await asyncio.sleep(0.2)  # (its connection's pass)
    reads = counted_reads(scheduler)
    first = await create(scheduler, request(SIMPLE))
    assert (await box.assignment()).workflow_id == first.id
    second = await create(scheduler, request(SIMPLE))  # waits: the one slot is taken
    await box.nothing_for(0.3)
    await finish(scheduler, box, first.id)
    assert (await box.assignment()).workflow_id == second.id
    await finish(scheduler, box, second.id)
    await asyncio.sleep(0.2)
    # first placed by its create (no pass); second's pass (nothing free: no read); first's
    # slot freed: read, placed second, and that emptied the queue: second's slot freed reads
    # nothing
    assert reads == [1]


async def test_a_freed_slot_reads_the_queue_when_the_last_pass_left_work_unplaced(scheduler: Scheduler) -> None:
    box = scheduler.runner("box", slots=2)
    big = scheduler.runner("big", "big")
    await box.connect()
    await big.connect()
    await asyncio.sleep(0.2)  # (their connections' passes)
    reads = counted_reads(scheduler)
    held = await create(scheduler, request(SIMPLE, tags=("big",)))
    assert (await big.assignment()).workflow_id == held.id
    first = await create(scheduler, request(SIMPLE))
    assert (await box.assignment()).workflow_id == first.id
    await create(scheduler, request(SIMPLE, tags=("big",)))  # box has a free slot, not the tag: it waits
    await box.nothing_for(0.3)
    await finish(scheduler, box, first.id)
    await asyncio.sleep(0.2)
    # held and first placed by their creates; the last one's pass read it and left it; first's
    # slot freed: read again
    assert reads == [1, 1]
