"""CreateWorkflows: several creates of one caller in one call (the gateway's coalesced POST
/v1/workflow). Each item gets what CreateWorkflow would have answered it: its workflow, a
replay of its Idempotency-Key, or its own error; the good ones are committed before the
answer; a refused token refuses the whole call; each item is logged with its request id."""

from __future__ import annotations

import json
import logging
import uuid

import grpc
import pytest
from comfyfleet.scheduler.v1 import workflow_pb2, workflow_service_pb2

from services.common.errors import Conflict, InvalidArgument, from_status_bytes

from .harness import Scheduler, bearer

pytestmark = pytest.mark.timeout(30)

GRAPH = json.dumps({"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1,
                                                                  "color": 0}}})


def item(name: str, **fields: object) -> workflow_service_pb2.CreateWorkflowRequest:
    return workflow_service_pb2.CreateWorkflowRequest(
        **{"id": str(uuid.uuid4()), "name": name, "workflow_json": GRAPH, **fields})  # type: ignore[arg-type]


async def get(scheduler: Scheduler, workflow_id: str) -> workflow_pb2.Workflow | None:
    try:
        reply = await scheduler.workflows.GetWorkflow(workflow_service_pb2.GetWorkflowRequest(id=workflow_id),
                                                      metadata=bearer(scheduler.dev_token))
    except grpc.aio.AioRpcError as err:
        assert err.code() == grpc.StatusCode.NOT_FOUND
        return None
    workflow: workflow_pb2.Workflow = reply.workflow
    return workflow


async def test_each_item_gets_its_own_answer_and_the_good_ones_are_committed(
        scheduler: Scheduler, caplog: pytest.LogCaptureFixture) -> None:
    meta = bearer(scheduler.dev_token)
    taken = item("taken")
    await scheduler.workflows.CreateWorkflow(taken, metadata=meta)
    keyed = item("keyed", idempotency_key="key-1")
    first = (await scheduler.workflows.CreateWorkflow(keyed, metadata=meta)).workflow

    good = [item(f"good-{n}") for n in range(6)]
    bad_graph = item("bad", workflow_json="{not json")
    duplicate = item("dup")
    duplicate.id = taken.id
    replay = workflow_service_pb2.CreateWorkflowRequest()
    replay.CopyFrom(keyed)
    reused = item("other request, same key", idempotency_key="key-1")
    items = [good[0], bad_graph, good[1], duplicate, good[2], replay, good[3], reused, good[4], good[5]]
    request_ids = [f"req-{n}" for n in range(len(items))]

    with caplog.at_level(logging.INFO, logger="services.grpc"):
        reply = await scheduler.workflows.CreateWorkflows(
            workflow_service_pb2.CreateWorkflowsRequest(items=items, request_ids=request_ids), metadata=meta)

    assert len(reply.results) == len(items)
    outcome = dict(zip(request_ids, reply.results, strict=True))
    for n in (0, 2, 4, 6, 8, 9):
        result = outcome[f"req-{n}"]
        assert result.WhichOneof("outcome") == "workflow", result
        assert result.workflow.id == items[n].id and result.workflow.name == items[n].name
        assert result.workflow.status == workflow_pb2.WORKFLOW_STATUS_ACCEPTED
        assert result.workflow.workflow_json == GRAPH  # the answer has the graph (status events do not)
        stored = await get(scheduler, items[n].id)
        assert stored is not None and stored.name == items[n].name
    invalid = from_status_bytes(outcome["req-1"].error_status)
    assert isinstance(invalid, InvalidArgument) and invalid.message
    assert await get(scheduler, bad_graph.id) is None
    exists = from_status_bytes(outcome["req-3"].error_status)
    assert isinstance(exists, Conflict) and exists.reason == "WORKFLOW_EXISTS"
    assert outcome["req-5"].workflow == first and first.workflow_json == GRAPH  # the key replays the first answer
    key_reused = from_status_bytes(outcome["req-7"].error_status)
    assert isinstance(key_reused, Conflict) and key_reused.reason == "IDEMPOTENCY_KEY_REUSED"
    assert await get(scheduler, reused.id) is None

    logged = {r.request_id: r.getMessage() for r in caplog.records  # type: ignore[attr-defined]
              if r.getMessage().startswith("/comfyfleet.scheduler.v1.WorkflowService/CreateWorkflow ")}
    assert set(logged) == set(request_ids)
    assert logged["req-0"].startswith("/comfyfleet.scheduler.v1.WorkflowService/CreateWorkflow OK ")
    assert logged["req-1"].startswith("/comfyfleet.scheduler.v1.WorkflowService/CreateWorkflow INVALID_ARGUMENT ")


async def test_a_refused_token_refuses_the_whole_call(scheduler: Scheduler) -> None:
    items = [item("a"), item("b")]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await scheduler.workflows.CreateWorkflows(workflow_service_pb2.CreateWorkflowsRequest(items=items),
                                                  metadata=bearer("not-a-token"))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    for i in items:
        assert await get(scheduler, i.id) is None


async def test_another_users_items_stay_theirs(scheduler: Scheduler) -> None:
    other = await scheduler.new_user_token("other")
    items = [item("theirs-1"), item("theirs-2")]
    reply = await scheduler.workflows.CreateWorkflows(workflow_service_pb2.CreateWorkflowsRequest(items=items),
                                                      metadata=bearer(other))
    assert all(r.WhichOneof("outcome") == "workflow" for r in reply.results)
    for i in items:
        assert await get(scheduler, i.id) is None  # not the dev user's
        mine = await scheduler.workflows.GetWorkflow(workflow_service_pb2.GetWorkflowRequest(id=i.id),
                                                     metadata=bearer(other))
        assert mine.workflow.name == i.name


async def test_too_many_items_are_refused(scheduler: Scheduler) -> None:
    items = [item(f"w{n}") for n in range(257)]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await scheduler.workflows.CreateWorkflows(workflow_service_pb2.CreateWorkflowsRequest(items=items),
                                                  metadata=bearer(scheduler.dev_token))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert await get(scheduler, items[0].id) is None
