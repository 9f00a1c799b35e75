"""A workflow requeued after its runner was lost keeps none of the lost attempt's outputs: the
completed record lists only what the attempt that completed stored (found by tests/faults:
a runner killed between storing an output and reporting completion left two outputs for one
output node)."""

from __future__ import annotations

import pytest
from comfyfleet.runner.v1 import runner_event_pb2 as ev
from comfyfleet.storage.v1 import object_pb2

from .harness import Scheduler, watch
from .test_service import SIMPLE, create, get, request, status_of

pytestmark = pytest.mark.timeout(20)


def stored(wid: str, filename: str) -> ev.OutputStored:
    return ev.OutputStored(node_id="9", filename=filename, object=object_pb2.ObjectRef(
        key=f"outputs/{wid}/9/{filename}", size_bytes=10, sha256="ab", content_type="image/png"))


async def test_the_lost_attempts_outputs_are_dropped_when_it_is_requeued(scheduler: Scheduler) -> None:
    lost = scheduler.runner("lost")
    await lost.connect()
    wf = await create(scheduler, request(SIMPLE))
    w = watch(scheduler, wf.id, from_start=True)
    await lost.assignment()
    lost.send(wf.id, 1, running=ev.Running(prompt_id="p-1"))
    lost.send(wf.id, 1, output_stored=stored(wf.id, "first_00001_.png"))
    await w.until("output", f"outputs/{wf.id}/9/first_00001_.png")
    await lost.drop()  # gone before it reported completion

    spare = scheduler.runner("spare")
    await spare.connect()
    second = await spare.assignment()
    assert (second.workflow_id, second.attempt) == (wf.id, 2)
    requeued = await get(scheduler, wf.id)
    assert list(requeued.outputs) == []  # the lost attempt's output is not the workflow's

    spare.send(wf.id, 2, running=ev.Running(prompt_id="p-2"))
    spare.send(wf.id, 2, output_stored=stored(wf.id, "second_00001_.png"))
    spare.send(wf.id, 2, completed=ev.Completed())
    await w.end()
    final = await get(scheduler, wf.id)
    assert status_of(final) == "completed"
    assert [o.object.key for o in final.outputs] == [f"outputs/{wf.id}/9/second_00001_.png"]
