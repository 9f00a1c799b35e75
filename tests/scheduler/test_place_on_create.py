"""A create that finds nothing waiting and a runner slot free is placed by its own transaction
(Execution.reserve_new): the assignment is committed with the workflow and sent at once, with
no placement pass, no queue read and no second commit. Anything else goes through the queue,
so a new workflow never overtakes one that waits."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import grpc
import pytest
from comfyfleet.runner.v1 import runner_event_pb2 as ev
from comfyfleet.scheduler.v1 import workflow_pb2

from .harness import Scheduler, watch
from .test_placement_reads import counted_reads, finish
from .test_service import SIMPLE, create, fails, request

pytestmark = pytest.mark.timeout(20)


def counted_changes(s: Scheduler) -> list[str]:
    """The workflow ids of every WorkflowStore.change from now on."""
    execution = s.execution
    assert execution is not None
    store = execution.store
    real = store.change
    ids: list[str] = []

    async def change(workflow_id: str, *args: Any, **kwargs: Any) -> Any:
        ids.append(workflow_id)
        return await real(workflow_id, *args, **kwargs)

    store.change = change  # type: ignore[method-assign]
    return ids


def held(s: Scheduler) -> list[Sequence[str]]:
    assert s.execution is not None
    return [sorted(session.held) for session in s.execution.fleet.sessions.values()]


async def test_a_create_with_a_free_slot_and_nothing_waiting_commits_its_assignment(scheduler: Scheduler) -> None:
    box = scheduler.runner("box")
    await box.connect()
    await asyncio.sleep(0.2)  # (its connection's pass: nothing waits)
    reads, changes = counted_reads(scheduler), counted_changes(scheduler)
    graph = {"1": {"class_type": "Note", "inputs": {"text": "$text(prompt)", "seed": "$random()"}}}
    req = request(graph)
    req.inputs.add(field="$prompt", value="a cat")
    workflow = await create(scheduler, req)
    assert workflow.status == workflow_pb2.WORKFLOW_STATUS_ACCEPTED
    assignment = await box.assignment()
    assert (assignment.workflow_id, assignment.attempt) == (workflow.id, 1)
    prompt = json.loads(assignment.prompt_json)
    assert prompt["1"]["inputs"]["text"] == "a cat" and isinstance(prompt["1"]["inputs"]["seed"], int)
    # no pass read the queue, and nothing but the create wrote the workflow
    assert reads == [] and changes == []
    w = watch(scheduler, workflow.id, from_start=True)
    box.send(workflow.id, 1, running=ev.Running(prompt_id="p"))
    box.send(workflow.id, 1, completed=ev.Completed())
    seen = await w.end()
    assert seen[:2] == [(1, "status", "accepted"), (2, "log", "assigned to runner box (attempt 1)")]
    assert seen[-1][1:] == ("status", "completed")
    # the user's numbering has both events in order
    assert [e.user_seq for e in w.events[:2]] == [w.events[0].user_seq, w.events[0].user_seq + 1]


async def test_a_new_workflow_never_overtakes_one_waiting(scheduler: Scheduler) -> None:
    box = scheduler.runner("box")
    await box.connect()
    await asyncio.sleep(0.2)
    first = await create(scheduler, request(SIMPLE))
    assert (await box.assignment()).workflow_id == first.id
    waiting = await create(scheduler, request(SIMPLE))  # the one slot is taken: it waits
    await box.nothing_for(0.2)
    await finish(scheduler, box, first.id)
    # the slot is free now, and a pass is due: the new one goes behind the waiting one
    late = await create(scheduler, request(SIMPLE))
    assert (await box.assignment()).workflow_id == waiting.id
    await box.nothing_for(0.2)
    await finish(scheduler, box, waiting.id)
    assert (await box.assignment()).workflow_id == late.id


async def test_a_create_whose_caller_is_cancelled_is_still_committed_and_sent(scheduler: Scheduler) -> None:
    execution, ops = scheduler.execution, scheduler.ops
    assert execution is not None and ops is not None
    box = scheduler.runner("box")
    await box.connect()
    await asyncio.sleep(0.2)
    user = await scheduler.identity.user_by_name("dev")
    assert user is not None
    req = request(SIMPLE)
    async with execution.store.db.write_lock:  # the commit waits here
        call = asyncio.create_task(ops.create(user, req))
        await asyncio.sleep(0.1)
        assert held(scheduler) == [[req.id]]  # the slot is reserved for it
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
    assignment = await box.assignment()
    assert assignment.workflow_id == req.id
    w = watch(scheduler, req.id, from_start=True)
    assert await w.until("log", "assigned to runner box (attempt 1)")
    await w.stop()


async def test_a_replayed_or_refused_create_gives_its_slot_back(scheduler: Scheduler) -> None:
    box = scheduler.runner("box", slots=2)
    await box.connect()
    await asyncio.sleep(0.2)
    keyed = request(SIMPLE)
    keyed.idempotency_key = "k-1"
    first = await create(scheduler, keyed)
    assert (await box.assignment()).workflow_id == first.id
    retried = request(SIMPLE)  # the same request and key (another id: not part of the request's
    retried.idempotency_key = "k-1"  # fingerprint), placed as created until the key is found
    again = await create(scheduler, retried)
    assert again.id == first.id
    assert held(scheduler) == [[first.id]]
    code, err = await fails(create(scheduler, request(SIMPLE, workflow_id=first.id)))  # the id is taken
    assert (code, err.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "WORKFLOW_EXISTS")
    assert held(scheduler) == [[first.id]]
    await box.nothing_for(0.2)
    second = await create(scheduler, request(SIMPLE))  # the second slot is still free
    assert (await box.assignment()).workflow_id == second.id
    assert held(scheduler) == [sorted([first.id, second.id])]
