"""The scheduler as its callers see it: real gRPC stubs against the servicers on port 0, a
SQLite file, a storage fake, and fake runner agents speaking RunnerSessionService.

What is asserted is what a user (through the gateway) or a runner would receive: status codes
with their ErrorInfo reason and details, the records, the event stream in order.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable
from typing import Any

import grpc
import pytest
from comfyfleet.runner.v1 import runner_event_pb2 as ev
from comfyfleet.runner.v1 import runner_session_service_pb2 as session_pb2
from comfyfleet.scheduler.v1 import workflow_pb2, workflow_service_pb2
from comfyfleet.storage.v1 import object_pb2

from services.common.errors import ComfyfleetError, from_rpc_error
from services.common.grpc_server import WATCH_READY_KEY

from .harness import LEASE_SECONDS, Scheduler, bearer, status_name, watch

pytestmark = pytest.mark.timeout(20)

GRAPH = {
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15.safetensors"}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "$text(prompt)", "clip": ["4", 1]}},
    "3": {"class_type": "KSampler", "inputs": {
        "seed": "$random()", "noise_seed": "$random()", "sampler_name": "$choice(sampler, euler, ddim)",
        "steps": "$text(steps, 20)", "model": ["4", 0]}},
    "10": {"class_type": "LoadImage", "inputs": {"image": "$file(input_image)"}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "$timestamp()", "images": ["8", 0]}},
    "12": {"class_type": "SaveImage", "inputs": {"filename_prefix": "$timestamp()", "images": ["8", 0]}},
}
SIMPLE = {"1": {"class_type": "EmptyLatentImage", "inputs": {"width": 512}}}

W = workflow_service_pb2


def image(workflow_id: str) -> W.WorkflowInput:
    return W.WorkflowInput(
        field="$input_image", filename="cat.png",
        object=object_pb2.ObjectRef(key=f"inputs/{workflow_id}/input_image/cat.png", size_bytes=3, sha256="ab12",
                                    content_type="image/png"))


def request(graph: Any = GRAPH, *, name: str = "text to image", tags: tuple[str, ...] = (),
            inputs: list[W.WorkflowInput] | None = None, workflow_id: str | None = None) -> W.CreateWorkflowRequest:
    workflow_id = workflow_id or str(uuid.uuid4())
    if inputs is None:
        inputs = [W.WorkflowInput(field="$prompt", value="a cat"), W.WorkflowInput(field="#sampler", value="ddim"),
                  image(workflow_id)] if graph is GRAPH else []
    return W.CreateWorkflowRequest(
        id=workflow_id, name=name, workflow_json=graph if isinstance(graph, str) else json.dumps(graph),
        tags=list(tags), inputs=inputs)


async def create(s: Scheduler, req: W.CreateWorkflowRequest | None = None, token: str | None = None
                 ) -> workflow_pb2.Workflow:
    reply = await s.workflows.CreateWorkflow(req or request(), metadata=bearer(token or s.dev_token), timeout=5)
    return reply.workflow


async def get(s: Scheduler, workflow_id: str) -> workflow_pb2.Workflow:
    return (await s.workflows.GetWorkflow(W.GetWorkflowRequest(id=workflow_id), metadata=bearer(s.dev_token),
                                          timeout=5)).workflow


async def fails(call: Awaitable[Any]) -> tuple[grpc.StatusCode, ComfyfleetError]:
    try:
        await call
    except grpc.aio.AioRpcError as err:
        return err.code(), from_rpc_error(err)
    raise AssertionError("the call succeeded")


def status_of(wf: workflow_pb2.Workflow) -> str:
    return status_name(wf.status)


# -- create, get, list ------------------------------------------------------------------------------


async def test_create_answers_with_the_accepted_workflow_and_get_returns_it(scheduler: Scheduler) -> None:
    req = request()
    created = await create(scheduler, req)

    assert created.id == req.id
    assert status_of(created) == "accepted"
    assert created.name == "text to image"
    assert created.attempt == 0
    assert created.runner_id == ""
    assert created.last_seq == 1
    assert created.HasField("created_at") and not created.HasField("started_at")
    # The values the user chose, and the defaults that apply; system values come per execution.
    assert [(p.placeholder, p.value) for p in created.params] == [
        ("$text(prompt)", "a cat"), ("$choice(sampler, euler, ddim)", "ddim"), ("$text(steps, 20)", "20")]

    got = await get(scheduler, req.id)
    assert got.id == req.id and status_of(got) == "accepted"
    assert json.loads(got.workflow_json) == GRAPH
    assert got.user_id == created.user_id


FIVE_OPTIONS = "$choice(s, a, b, c, d, e)"
BAD_CREATES: list[tuple[str, W.CreateWorkflowRequest, str, list[dict[str, Any]]]] = [
    # (case, request, reason, details)
    ("empty name", request(name="  "), "INVALID_NAME", [{"field": "name"}]),
    ("name of 201 characters", request(name="n" * 201), "INVALID_NAME", [{"field": "name"}]),
    ("id that is not a UUID", request(workflow_id="123"), "INVALID_ARGUMENT", [{"field": "id"}]),
    ("no workflow_json", request(""), "MISSING_FIELD", [{"field": "workflow_json"}]),
    ("broken JSON", request('{"3": {"class_type": '), "INVALID_WORKFLOW", [{"field": "workflow_json"}]),
    ("UI-format export", request({"nodes": [], "links": []}), "UI_FORMAT_WORKFLOW", [{"field": "workflow_json"}]),
    ("unknown $ field", request(SIMPLE, inputs=[W.WorkflowInput(field="$nope", value="x")]), "UNKNOWN_FIELD",
     [{"field": "$nope"}]),
    ("unknown # field", request(SIMPLE, inputs=[W.WorkflowInput(field="#nope", value="x")]), "UNKNOWN_FIELD",
     [{"field": "#nope"}]),
    ("required text missing", request(inputs=[W.WorkflowInput(field="#sampler", value="ddim")]), "MISSING_FIELD",
     [{"field": "$prompt"}]),
    ("choice not among the options",
     request(inputs=[W.WorkflowInput(field="$prompt", value="a"), W.WorkflowInput(field="#sampler", value="heun")]),
     "INVALID_CHOICE", [{"field": "#sampler"}]),
    ("choice with 5 options", request({"3": {"class_type": "KSampler", "inputs": {"s": FIVE_OPTIONS}}}),
     "INVALID_PLACEHOLDER", [{"field": "#s", "node_id": "3", "input": "s", "placeholder": FIVE_OPTIONS}]),
    ("bad tag", request(SIMPLE, tags=("gpu a100",)), "INVALID_TAG", [{"field": "tags", "tag": "gpu a100"}]),
    ("tags no runner has", request(SIMPLE, tags=("h100",)), "NO_MATCHING_RUNNER",
     [{"field": "tags", "tags": ["h100"]}]),
]


@pytest.mark.parametrize(("req", "reason", "details"), [c[1:] for c in BAD_CREATES], ids=[c[0] for c in BAD_CREATES])
async def test_create_rejects_bad_input_with_a_reason_and_stores_nothing(
    scheduler: Scheduler, req: W.CreateWorkflowRequest, reason: str, details: list[dict[str, Any]]
) -> None:
    code, err = await fails(create(scheduler, req))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.reason, err.details) == (reason, details)
    assert err.message  # the 400 body needs words for people too
    listed = await scheduler.workflows.ListWorkflows(W.ListWorkflowsRequest(), metadata=bearer(scheduler.dev_token))
    assert listed.total == 0


async def test_create_with_an_id_already_taken_is_a_conflict_and_changes_nothing(scheduler: Scheduler) -> None:
    req = request(SIMPLE, name="original")
    await create(scheduler, req)
    again = W.CreateWorkflowRequest()
    again.CopyFrom(req)
    again.name = "impostor"
    code, err = await fails(create(scheduler, again))
    assert (code, err.reason, err.details) == (grpc.StatusCode.FAILED_PRECONDITION, "WORKFLOW_EXISTS",
                                               [{"id": req.id}])
    assert err.message == "a workflow with this id already exists"  # not a database error
    kept = await get(scheduler, req.id)
    assert (kept.name, kept.last_seq) == ("original", 1)


async def test_calls_without_a_valid_api_token_are_unauthenticated(scheduler: Scheduler) -> None:
    get_request = W.GetWorkflowRequest(id=str(uuid.uuid4()))
    cases = [
        (None, "TOKEN_MISSING"),
        ([("authorization", "Basic abc")], "TOKEN_MALFORMED"),
        (bearer("cf_not-a-token"), "TOKEN_INVALID"),
        (bearer(scheduler.runner_token), "TOKEN_INVALID"),  # a runner token is not an API token
    ]
    for metadata, reason in cases:
        code, err = await fails(scheduler.workflows.GetWorkflow(get_request, metadata=metadata))
        assert (code, err.reason) == (grpc.StatusCode.UNAUTHENTICATED, reason), metadata


async def test_a_watch_says_it_started_before_its_first_event(scheduler: Scheduler) -> None:
    # Resuming at the end of an unfinished workflow: no message may come for a long time, but
    # the initial metadata says at once that the caller and the workflow were checked.
    wf = await create(scheduler)
    token = await scheduler.new_user_token("ann")
    mine = scheduler.workflows.WatchWorkflow(W.WatchWorkflowRequest(id=wf.id, after_seq=wf.last_seq),
                                             metadata=bearer(scheduler.dev_token))
    refused = scheduler.workflows.WatchWorkflow(W.WatchWorkflowRequest(id=wf.id, after_seq=wf.last_seq),
                                                metadata=bearer(token))
    try:
        assert (WATCH_READY_KEY, "ready") in tuple(await asyncio.wait_for(mine.initial_metadata(), 5))
        assert not mine.done()
        assert WATCH_READY_KEY not in dict(await asyncio.wait_for(refused.initial_metadata(), 5))
        assert await refused.code() == grpc.StatusCode.NOT_FOUND
    finally:
        mine.cancel()
        refused.cancel()


async def test_another_users_workflow_is_not_found_like_one_that_does_not_exist(scheduler: Scheduler) -> None:
    mine = await create(scheduler)
    other = await scheduler.new_user_token("mallory")
    missing = str(uuid.uuid4())
    for workflow_id in (mine.id, missing):
        for call in (
            scheduler.workflows.GetWorkflow(W.GetWorkflowRequest(id=workflow_id), metadata=bearer(other)),
            scheduler.workflows.CancelWorkflow(W.CancelWorkflowRequest(id=workflow_id), metadata=bearer(other)),
            scheduler.workflows.WatchWorkflow(W.WatchWorkflowRequest(id=workflow_id), metadata=bearer(other)).read(),
        ):
            code, err = await fails(call)
            assert (code, err.reason, err.message) == (grpc.StatusCode.NOT_FOUND, "WORKFLOW_NOT_FOUND",
                                                       "workflow not found")
            assert err.details == [{"id": workflow_id}]
    # and mallory's attempt changed nothing
    assert status_of(await get(scheduler, mine.id)) == "accepted"


async def test_list_is_newest_first_paginated_and_only_the_callers(scheduler: Scheduler) -> None:
    other = await scheduler.new_user_token("mallory")
    await create(scheduler, request(SIMPLE, name="theirs"), token=other)
    for name in ("first", "second", "third"):
        await create(scheduler, request(SIMPLE, name=name))

    async def page(**kw: Any) -> tuple[list[str], int]:
        reply = await scheduler.workflows.ListWorkflows(W.ListWorkflowsRequest(**kw),
                                                        metadata=bearer(scheduler.dev_token))
        return [w.name for w in reply.workflows], reply.total

    assert await page(per_page=2) == (["third", "second"], 3)
    assert await page(per_page=2, page=2) == (["first"], 3)
    assert await page(per_page=2, page=3) == ([], 3)
    assert await page() == (["third", "second", "first"], 3)  # page 1, per_page 10
    theirs = await scheduler.workflows.ListWorkflows(W.ListWorkflowsRequest(), metadata=bearer(other))
    assert ([w.name for w in theirs.workflows], theirs.total) == (["theirs"], 1)

    for bad, field in (({"per_page": 101}, "per_page"), ({"per_page": -1}, "per_page"), ({"page": -1}, "page")):
        code, err = await fails(scheduler.workflows.ListWorkflows(
            W.ListWorkflowsRequest(**bad), metadata=bearer(scheduler.dev_token)))
        assert (code, err.details) == (grpc.StatusCode.INVALID_ARGUMENT, [{"field": field}])


# -- a workflow from start to finish ------------------------------------------------------------------


async def test_a_workflow_runs_on_a_runner_and_watchers_see_every_step_once(scheduler: Scheduler) -> None:
    runner = scheduler.runner("gpu-1", "gpu", "sdxl")
    welcome = await runner.connect()
    assert welcome.runner_id
    assert welcome.lease.ToTimedelta().total_seconds() == LEASE_SECONDS

    req = request(tags=("gpu",))
    before_ms = time.time_ns() // 1_000_000
    created = await create(scheduler, req)
    first = watch(scheduler, created.id, from_start=True)

    a = await runner.assignment()
    after_ms = time.time_ns() // 1_000_000
    assert (a.workflow_id, a.attempt, a.output_prefix) == (created.id, 1, f"outputs/{created.id}/")
    assert list(a.inputs) == [session_pb2.InputFile(param="input_image", filename="cat.png",
                                                    object=image(created.id).object)]
    prompt = json.loads(a.prompt_json)
    # text and choice values in place, the file left for the runner
    assert prompt["6"]["inputs"] == {"text": "a cat", "clip": ["4", 1]}
    assert prompt["10"]["inputs"] == {"image": "$file(input_image)"}
    ksampler = prompt["3"]["inputs"]
    assert (ksampler["sampler_name"], ksampler["steps"], ksampler["model"]) == ("ddim", "20", ["4", 0])
    # a fresh 64-bit number per $random(), one Unix-ms number for every $timestamp()
    seed, noise_seed = ksampler["seed"], ksampler["noise_seed"]
    assert all(isinstance(v, int) and 0 <= v < 2**64 for v in (seed, noise_seed))
    assert seed != noise_seed
    stamp = prompt["9"]["inputs"]["filename_prefix"]
    assert prompt["12"]["inputs"]["filename_prefix"] == stamp
    assert isinstance(stamp, int) and before_ms <= stamp <= after_ms
    # the record shows the values of this execution
    assigned = await get(scheduler, created.id)
    assert (assigned.runner_id, assigned.attempt) == (welcome.runner_id, 1)
    assert [(p.placeholder, p.value) for p in assigned.params] == [
        ("$text(prompt)", "a cat"), ("$random()", str(seed)), ("$random()", str(noise_seed)),
        ("$choice(sampler, euler, ddim)", "ddim"), ("$text(steps, 20)", "20"),
        ("$timestamp()", str(stamp)), ("$timestamp()", str(stamp))]

    wid, key = created.id, f"outputs/{created.id}/9/ComfyUI_00001_.png"
    runner.send(wid, 1, uploaded=ev.Uploaded())
    runner.send(wid, 1, queued=ev.Queued(prompt_id="p-1", queue_number=2))
    await first.until("status", "queued")
    runner.send(wid, 1, runner_seq=2, queued=ev.Queued(prompt_id="p-1", queue_number=0))  # a repeat: ignored
    runner.send(wid, 2, runner_seq=3, executing=ev.Executing(node_id="stale"))  # not this attempt: ignored
    runner.send(wid, 1, running=ev.Running(prompt_id="p-1"))
    running_seq = await first.until("status", "running")
    second = watch(scheduler, wid, after_seq=running_seq)  # a client reconnecting with Last-Event-ID
    runner.send(wid, 1, executing=ev.Executing(node_id="3", node_type="KSampler"))
    runner.send(wid, 1, progress=ev.Progress(node_id="3", node_type="KSampler", value=5, max=20))
    runner.send(wid, 1, output_stored=ev.OutputStored(
        node_id="9", filename="ComfyUI_00001_.png",
        object=object_pb2.ObjectRef(key=key, size_bytes=1234, sha256="cafe", content_type="image/png")))
    last = runner.send(wid, 1, completed=ev.Completed())
    assert last == 7  # runner_seq 1..7 (the repeat reused 2)

    expected = [
        (1, "status", "accepted"),
        (2, "log", "assigned to runner gpu-1 (attempt 1)"),
        (3, "status", "uploaded"),
        (4, "status", "queued"),
        (5, "status", "running"),
        (6, "executing", "3"),
        (7, "progress", "3 5/20"),
        (8, "output", key),
        (9, "status", "completed"),
    ]
    assert await first.end() == expected  # ends by itself after the terminal event
    assert await second.end() == expected[running_seq:]  # no gap, no duplicate
    assert [r.WhichOneof("message") for r in second.responses] == ["event"] * 4  # resuming: no snapshot

    # The status events carry the record as it was at that point.
    by_seq = {e.seq: e for e in first.events}
    queued = by_seq[4].status.workflow
    assert (queued.prompt_id, queued.queue_number, queued.runner_id) == ("p-1", 2, welcome.runner_id)
    assert by_seq[5].status.workflow.HasField("started_at")
    assert not by_seq[5].status.workflow.HasField("queue_number")
    done = by_seq[9].status.workflow
    assert [o.object.key for o in done.outputs] == [key]
    assert done.HasField("completed_at")
    # The graph is in the create's answer and in GetWorkflow, not copied into each status event.
    assert created.workflow_json == req.workflow_json == (await get(scheduler, wid)).workflow_json
    statuses = [e.status.workflow for e in first.events if e.WhichOneof("kind") == "status"]
    assert len(statuses) == 5 and not any(s.workflow_json for s in statuses)

    final = await get(scheduler, wid)
    assert status_of(final) == "completed"
    assert (final.last_seq, final.attempt, final.prompt_id) == (9, 1, "p-1")
    assert [(o.node_id, o.filename, o.object.size_bytes) for o in final.outputs] == [
        ("9", "ComfyUI_00001_.png", 1234)]
    # the finished workflow's input files are deleted
    await scheduler.storage.wait_deleted(f"inputs/{wid}/")
    # the freed slot takes the next workflow
    nxt = await create(scheduler, request(SIMPLE))
    assert (await runner.assignment()).workflow_id == nxt.id


async def test_watching_a_finished_workflow(scheduler: Scheduler) -> None:
    runner = scheduler.runner("gpu-1")
    await runner.connect()
    wf = await create(scheduler, request(SIMPLE))
    a = await runner.assignment()
    runner.send(a.workflow_id, a.attempt, running=ev.Running(prompt_id="p"))
    runner.send(a.workflow_id, a.attempt, failed=ev.Failed(failure=workflow_pb2.Failure(
        node_id="1", node_type="EmptyLatentImage", exception_type="torch.OutOfMemoryError",
        exception_message="CUDA out of memory")))
    full = await watch(scheduler, wf.id, from_start=True).end()
    assert [what for _, kind, what in full if kind == "status"] == ["accepted", "running", "failed"]
    last = full[-1][0]

    # No cursor: one snapshot of the finished workflow, then the stream ends.
    snap = watch(scheduler, wf.id)
    await snap.end()
    assert [r.WhichOneof("message") for r in snap.responses] == ["snapshot"]
    failed = snap.responses[0].snapshot
    assert status_of(failed) == "failed"
    assert (failed.failure.node_id, failed.failure.exception_type) == ("1", "torch.OutOfMemoryError")
    assert failed.last_seq == last

    # Resuming from the middle replays the rest; from the end there is nothing left: it ends at once.
    assert await watch(scheduler, wf.id, after_seq=last - 1).end() == full[-1:]
    assert await watch(scheduler, wf.id, after_seq=last).end() == []


async def test_a_tagged_workflow_waits_for_a_runner_with_every_tag(scheduler: Scheduler) -> None:
    plain = scheduler.runner("plain")
    gpu = scheduler.runner("gpu-1", "gpu")
    await plain.connect()
    await gpu.connect()
    # untagged runner free, gpu runner free: the gpu workflow goes to the gpu runner only
    wf = await create(scheduler, request(SIMPLE, tags=("gpu",)))
    assert (await gpu.assignment()).workflow_id == wf.id
    # gpu busy: the next gpu workflow waits instead of going to the free untagged runner
    waiting = await create(scheduler, request(SIMPLE, tags=("gpu",)))
    await plain.nothing_for(0.5)
    assert status_of(await get(scheduler, waiting.id)) == "accepted"
    # the slot frees: it runs
    gpu.send(wf.id, 1, running=ev.Running(prompt_id="p"))
    gpu.send(wf.id, 1, completed=ev.Completed())
    a = await gpu.assignment()
    assert (a.workflow_id, a.attempt) == (waiting.id, 1)


# -- cancel -------------------------------------------------------------------------------------------


async def test_cancel_of_an_unassigned_workflow_is_immediate_and_of_a_finished_one_refused(
    scheduler: Scheduler,
) -> None:
    wf = await create(scheduler)
    cancel = W.CancelWorkflowRequest(id=wf.id)
    reply = await scheduler.workflows.CancelWorkflow(cancel, metadata=bearer(scheduler.dev_token))
    assert status_of(reply.workflow) == "cancelled"
    assert reply.workflow.HasField("completed_at")
    assert await watch(scheduler, wf.id, from_start=True).end() == [
        (1, "status", "accepted"), (2, "status", "cancelled")]
    await scheduler.storage.wait_deleted(f"inputs/{wf.id}/")

    code, err = await fails(scheduler.workflows.CancelWorkflow(cancel, metadata=bearer(scheduler.dev_token)))
    assert (code, err.reason, err.message) == (
        grpc.StatusCode.FAILED_PRECONDITION, "WORKFLOW_TERMINAL", "workflow is already cancelled")

    # a runner that connects later is not given it
    runner = scheduler.runner("late")
    await runner.connect()
    await runner.nothing_for(0.3)


async def test_cancel_of_a_running_workflow_asks_its_runner(scheduler: Scheduler) -> None:
    runner = scheduler.runner("gpu-1")
    await runner.connect()
    wf = await create(scheduler, request(SIMPLE))
    a = await runner.assignment()
    runner.send(wf.id, 1, running=ev.Running(prompt_id="p"))
    w = watch(scheduler, wf.id, from_start=True)
    await w.until("status", "running")

    reply = await scheduler.workflows.CancelWorkflow(W.CancelWorkflowRequest(id=wf.id),
                                                     metadata=bearer(scheduler.dev_token))
    assert status_of(reply.workflow) == "running"  # until the runner confirms
    message = await runner.next()
    assert message.WhichOneof("message") == "cancel"
    assert (message.cancel.workflow_id, message.cancel.attempt) == (wf.id, a.attempt)
    runner.send(wf.id, 1, cancelled=ev.Cancelled())
    assert [x[1:] for x in await w.end()][-2:] == [
        ("log", "cancel requested; asking the runner to stop it"), ("status", "cancelled")]
    # it had no file inputs: nothing to delete, no storage call (one with files: the tests above)
    await asyncio.sleep(0.2)
    assert f"inputs/{wf.id}/" not in scheduler.storage.deleted_prefixes


# -- runner sessions -----------------------------------------------------------------------------------


async def test_a_runner_without_a_valid_runner_token_is_refused(scheduler: Scheduler) -> None:
    for token, reason in ((scheduler.dev_token, "TOKEN_INVALID"), ("", "TOKEN_MISSING")):
        runner = scheduler.runner("intruder", token=token)
        with pytest.raises(ComfyfleetError) as caught:
            await runner.connect()
        assert (type(caught.value).__name__, caught.value.reason) == ("Unauthenticated", reason)


async def test_a_lost_runners_workflow_is_requeued_after_the_lease_and_runs_elsewhere(scheduler: Scheduler) -> None:
    lost = scheduler.runner("lost")
    await lost.connect()
    wf = await create(scheduler, request(SIMPLE))
    w = watch(scheduler, wf.id, from_start=True)
    first = await lost.assignment()
    lost.send(wf.id, 1, uploaded=ev.Uploaded())
    await w.until("status", "uploaded")

    await lost.drop()
    dropped_at = time.monotonic()
    spare = scheduler.runner("spare")
    spare_id = (await spare.connect()).runner_id
    second = await spare.assignment()
    # the lost runner had one lease to come back before its work moved
    assert time.monotonic() - dropped_at >= LEASE_SECONDS * 0.9
    assert (second.workflow_id, second.attempt) == (wf.id, 2)
    assert json.loads(second.prompt_json) == json.loads(first.prompt_json)  # no system values here

    # The lost runner comes back claiming attempt 1: it is told to drop it, and what it still
    # sends for that attempt is ignored.
    back = scheduler.runner("lost", held=[(wf.id, 1)])
    welcome = await back.connect()
    assert list(welcome.abandon) == [session_pb2.HeldWorkflow(workflow_id=wf.id, attempt=1)]
    back.continue_seq(wf.id, 1, 1)
    back.send(wf.id, 1, executing=ev.Executing(node_id="from-attempt-1"))
    back.send(wf.id, 1, completed=ev.Completed())
    await back.close()  # every event it sent has been handled

    spare.send(wf.id, 2, uploaded=ev.Uploaded())
    spare.send(wf.id, 2, running=ev.Running(prompt_id="p-2"))
    spare.send(wf.id, 2, completed=ev.Completed())
    assert await w.end() == [
        (1, "status", "accepted"),
        (2, "log", "assigned to runner lost (attempt 1)"),
        (3, "status", "uploaded"),
        (4, "log", "runner lease expired; requeued after attempt 1"),
        (5, "status", "accepted"),
        (6, "log", "assigned to runner spare (attempt 2)"),
        (7, "status", "uploaded"),
        (8, "status", "running"),
        (9, "status", "completed"),
    ]
    final = await get(scheduler, wf.id)
    assert (status_of(final), final.attempt, final.runner_id, final.prompt_id) == ("completed", 2, spare_id, "p-2")
    requeued = next(e for e in w.events if e.seq == 5).status.workflow
    assert (requeued.runner_id, requeued.attempt, requeued.prompt_id) == ("", 1, "")


async def test_a_runner_that_reports_completion_and_dies_at_once(scheduler: Scheduler) -> None:
    # Whatever the moment the connection breaks, the event either never arrived (the workflow
    # is still running, and will be requeued) or it was applied *and* watchers were told.
    for i in range(6):
        runner = scheduler.runner(f"short-lived-{i}", slots=8)
        await runner.connect()
        wf = await create(scheduler, request(SIMPLE))
        while (await runner.assignment()).workflow_id != wf.id:
            pass  # an earlier round's workflow, requeued to this runner
        w = watch(scheduler, wf.id, from_start=True)
        runner.send(wf.id, 1, running=ev.Running(prompt_id="p"))
        await w.until("status", "running")
        runner.send(wf.id, 1, completed=ev.Completed())
        await asyncio.sleep(i * 0.0005)
        await runner.drop()
        try:
            seen = await asyncio.wait_for(w.end(), 1.0)
        except TimeoutError:
            await w.stop()
            # not completed: still running, or already requeued once the 1 s lease ran out
            status = status_of(await get(scheduler, wf.id))
            assert status in ("running", "accepted"), f"round {i}: completed but not told"
        else:
            assert seen[-1][1:] == ("status", "completed")


async def test_a_runner_that_reconnects_within_the_lease_keeps_its_workflow(scheduler: Scheduler) -> None:
    runner = scheduler.runner("flaky")
    runner_id = (await runner.connect()).runner_id
    wf = await create(scheduler, request(SIMPLE))
    w = watch(scheduler, wf.id, from_start=True)
    await runner.assignment()
    runner.send(wf.id, 1, uploaded=ev.Uploaded())
    await w.until("status", "uploaded")
    idle = scheduler.runner("idle")
    await idle.connect()

    await runner.drop()
    again = scheduler.runner("flaky", held=[(wf.id, 1)])
    welcome = await again.connect()
    assert (welcome.runner_id, list(welcome.abandon)) == (runner_id, [])

    # Well past the lease: nothing moved. Had it been requeued, the idle runner would have it.
    await idle.nothing_for(LEASE_SECONDS * 1.5)
    kept = await get(scheduler, wf.id)
    assert (status_of(kept), kept.runner_id, kept.attempt) == ("uploaded", runner_id, 1)

    again.continue_seq(wf.id, 1, 1)
    again.send(wf.id, 1, runner_seq=1, uploaded=ev.Uploaded())  # resent after the reconnect: ignored
    again.send(wf.id, 1, running=ev.Running(prompt_id="p"))
    again.send(wf.id, 1, completed=ev.Completed())
    assert [s[1:] for s in await w.end()] == [
        ("status", "accepted"), ("log", "assigned to runner flaky (attempt 1)"), ("status", "uploaded"),
        ("status", "running"), ("status", "completed")]


async def test_a_runner_that_comes_back_without_its_workflow_gets_it_again(scheduler: Scheduler) -> None:
    runner = scheduler.runner("forgetful")
    await runner.connect()
    wf = await create(scheduler, request(SIMPLE))
    await runner.assignment()
    await runner.drop()

    again = scheduler.runner("forgetful")  # restarted: holds nothing
    await again.connect()
    a = await again.assignment()
    assert (a.workflow_id, a.attempt) == (wf.id, 2)
    w = watch(scheduler, wf.id, from_start=True)
    await w.until("log", "assigned to runner forgetful (attempt 2)")
    assert [s[1:] for s in w.seen] == [
        ("status", "accepted"), ("log", "assigned to runner forgetful (attempt 1)"),
        ("log", "runner came back without it; requeued after attempt 1"), ("status", "accepted"),
        ("log", "assigned to runner forgetful (attempt 2)")]
    await w.stop()
