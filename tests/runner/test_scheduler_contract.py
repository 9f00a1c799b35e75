"""The scheduler's side of what the runner reports (runner/v1 contract), against the real
scheduler from tests/scheduler/harness.py: work a runner hands back is placed again."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from comfyfleet.runner.v1 import runner_event_pb2 as ev

from tests.scheduler.harness import Scheduler, running_scheduler, watch
from tests.scheduler.test_service import SIMPLE, create, request


@pytest.fixture
async def scheduler(tmp_path: Path) -> AsyncIterator[Scheduler]:
    async with running_scheduler(tmp_path) as s:
        yield s


async def test_a_handed_back_workflow_is_placed_again_without_using_up_an_attempt(scheduler: Scheduler) -> None:
    runner = scheduler.runner("comfyui-down")
    await runner.connect()
    wf = await create(scheduler, request(SIMPLE))
    first = await runner.assignment()
    runner.send(first.workflow_id, first.attempt, uploaded=ev.Uploaded())
    runner.send(first.workflow_id, first.attempt, handed_back=ev.HandedBack(reason="ComfyUI unreachable"))

    again = await runner.assignment()
    assert (again.workflow_id, again.attempt) == (wf.id, 2)
    w = watch(scheduler, wf.id, from_start=True)
    await w.until("log", "assigned to runner comfyui-down (attempt 2)")
    assert [s[1:] for s in w.seen] == [
        ("status", "accepted"), ("log", "assigned to runner comfyui-down (attempt 1)"), ("status", "uploaded"),
        ("log", "runner handed it back (ComfyUI unreachable); requeued after attempt 1"), ("status", "accepted"),
        ("log", "assigned to runner comfyui-down (attempt 2)")]
    await w.stop()
