"""Concurrent POST /v1/workflow of one token go to the scheduler together (create_batcher.py):
every request still gets its own answer (its workflow or its own error body), a lone create is
a plain CreateWorkflow, creates of different tokens never share a call, a request that went
away before its call was sent is not created, and an error of the whole call is everyone's."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import grpc
import pytest
from comfyfleet.scheduler.v1 import workflow_pb2, workflow_service_pb2

from services.common.errors import PermissionDenied, Unavailable, status_proto_for
from services.gateway.create_batcher import MAX_IN_FLIGHT, CreateBatcher, Metadata
from tests.gateway.conftest import AUTH, Stack
from tests.gateway.forms import CONTENT_TYPE, File, body

GRAPH = {"1": {"class_type": "CLIPTextEncode", "inputs": {"text": "$text(prompt)"}}}


def form(n: int) -> bytes:
    return body([("name", f"w{n}"), ("workflow_json", File("w.json", json.dumps(GRAPH).encode(), "application/json")),
                 ("$prompt", f"cat {n}")])


async def post(stack: Stack, n: int) -> Any:
    return await stack.client.post("/v1/workflow", content=form(n), headers={"Content-Type": CONTENT_TYPE, **AUTH})


async def until(condition: Any, what: str) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def test_a_lone_create_is_a_plain_create_workflow(stack: Stack) -> None:
    reply = await post(stack, 0)
    assert reply.status_code == 201, reply.text
    assert stack.scheduler.batches == [] and len(stack.scheduler.created) == 1


async def test_creates_that_wait_together_go_in_one_call_and_each_gets_its_own_workflow(stack: Stack) -> None:
    stack.scheduler.create_gate = gate = asyncio.Event()
    first = [asyncio.create_task(post(stack, n)) for n in range(MAX_IN_FLIGHT)]
    await until(lambda: len(stack.scheduler.created) == MAX_IN_FLIGHT, "the first creates to be in flight")
    waiting = [asyncio.create_task(post(stack, n)) for n in range(MAX_IN_FLIGHT, MAX_IN_FLIGHT + 10)]
    await asyncio.sleep(0.5)  # they reach the gateway and wait for a free call
    gate.set()
    replies = await asyncio.gather(*first, *waiting)

    assert [r.status_code for r in replies] == [201] * len(replies), [r.text for r in replies]
    names = [r.json()["name"] for r in replies]
    assert names == [f"w{n}" for n in range(len(replies))]  # each request got its own workflow
    assert len({r.json()["id"] for r in replies}) == len(replies)
    assert sum(stack.scheduler.batches) <= 10  # the first creates went alone
    assert max(stack.scheduler.batches) > 1, stack.scheduler.batches
    assert {w.name for w in stack.scheduler.created} == set(names)


async def test_an_error_of_one_item_is_that_request_s_error_body(stack: Stack) -> None:
    stack.scheduler.create_gate = gate = asyncio.Event()
    stack.scheduler.create_error = PermissionDenied("You have reached the maximum number of open workflows",
                                                    reason="TIER_LIMIT", details=[{"limit": "open_workflows"}])
    first = [asyncio.create_task(post(stack, n)) for n in range(MAX_IN_FLIGHT)]
    await until(lambda: len(stack.scheduler.created) == MAX_IN_FLIGHT, "the first creates to be in flight")
    waiting = [asyncio.create_task(post(stack, n)) for n in range(MAX_IN_FLIGHT, MAX_IN_FLIGHT + 4)]
    await asyncio.sleep(0.5)
    gate.set()
    replies = await asyncio.gather(*first, *waiting)
    assert max(stack.scheduler.batches) > 1
    for reply in replies:
        assert reply.status_code == 403, reply.text
        assert reply.json()["reason"] == "TIER_LIMIT" and reply.json()["details"] == [{"limit": "open_workflows"}]


class Calls:
    """CreateBatcher's two calls, recorded, each waiting for `release`."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.made: list[tuple[str, list[str]]] = []  # (authorization, item names)
        self.error: grpc.aio.AioRpcError | None = None

    async def single(self, request: workflow_service_pb2.CreateWorkflowRequest,
                     metadata: Metadata) -> workflow_pb2.Workflow:
        self.made.append((dict(metadata)["authorization"], [request.name]))
        await self.release.wait()
        if self.error is not None:
            raise self.error
        return workflow_pb2.Workflow(id=request.id, name=request.name)

    async def batch(self, request: workflow_service_pb2.CreateWorkflowsRequest,
                    metadata: Metadata) -> workflow_service_pb2.CreateWorkflowsResponse:
        self.made.append((dict(metadata)["authorization"], [i.name for i in request.items]))
        await self.release.wait()
        if self.error is not None:
            raise self.error
        results = [workflow_service_pb2.CreateWorkflowResult(workflow=workflow_pb2.Workflow(id=i.id, name=i.name))
                   if not i.name.startswith("bad") else workflow_service_pb2.CreateWorkflowResult(
                       error_status=status_proto_for(Unavailable("no", reason="NOPE")).SerializeToString())
                   for i in request.items]
        return workflow_service_pb2.CreateWorkflowsResponse(results=results)


def request(name: str) -> workflow_service_pb2.CreateWorkflowRequest:
    return workflow_service_pb2.CreateWorkflowRequest(id=f"id-{name}", name=name)


async def test_tokens_never_share_a_call_and_each_item_keeps_its_answer() -> None:
    calls = Calls()
    batcher = CreateBatcher(calls.single, calls.batch, lambda err: Unavailable(str(err.details())))
    names = [(f"Bearer {t}", f"{t}-{n}") for n in range(5) for t in ("a", "b")]
    names.insert(7, ("Bearer a", "bad-1"))
    creates = [asyncio.create_task(batcher.create(auth, request(name))) for auth, name in names]
    await asyncio.sleep(0.05)
    calls.release.set()
    outcomes = await asyncio.gather(*creates, return_exceptions=True)

    for (_, name), outcome in zip(names, outcomes, strict=True):
        if name.startswith("bad"):
            assert isinstance(outcome, Unavailable) and outcome.reason == "NOPE"
        else:
            assert isinstance(outcome, workflow_pb2.Workflow) and outcome.name == name
    for auth, items in calls.made:
        assert all(name.startswith(auth[-1]) or name.startswith("bad") for name in items), (auth, items)
    assert sorted(n for _, items in calls.made for n in items) == sorted(n for _, n in names)
    assert any(len(items) > 1 for _, items in calls.made)
    assert batcher._tokens == {}  # nothing left behind once everything is answered


async def test_a_create_whose_request_went_away_before_its_call_is_not_sent() -> None:
    calls = Calls()
    batcher = CreateBatcher(calls.single, calls.batch, lambda err: Unavailable(str(err.details())))
    busy = [asyncio.create_task(batcher.create("Bearer a", request(f"busy-{n}"))) for n in range(MAX_IN_FLIGHT)]
    gone = asyncio.create_task(batcher.create("Bearer a", request("gone")))
    kept = asyncio.create_task(batcher.create("Bearer a", request("kept")))
    await asyncio.sleep(0.05)
    gone.cancel()
    calls.release.set()
    assert (await kept).name == "kept"
    await asyncio.gather(*busy)
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert "gone" not in [n for _, items in calls.made for n in items]


async def test_an_error_of_the_whole_call_is_every_item_s() -> None:
    calls = Calls()
    calls.error = grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(),
                                       details="scheduler down")
    batcher = CreateBatcher(calls.single, calls.batch, lambda err: Unavailable(str(err.details())))
    creates = [asyncio.create_task(batcher.create("Bearer a", request(f"w{n}"))) for n in range(6)]
    await asyncio.sleep(0.05)
    calls.release.set()
    outcomes = await asyncio.gather(*creates, return_exceptions=True)
    assert all(isinstance(o, Unavailable) and o.message == "scheduler down" for o in outcomes), outcomes
    assert any(len(items) > 1 for _, items in calls.made)
