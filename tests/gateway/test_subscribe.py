"""GET /v1/workflow/{id}/subscribe: SSE frames in order, resume, keep-alive, disconnect."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from comfyfleet.scheduler.v1 import workflow_pb2, workflow_service_pb2
from comfyfleet.storage.v1 import object_pb2

from services.common.errors import Unavailable
from tests.gateway.conftest import AUTH, Stack
from tests.gateway.fakes import PUBLIC_URL, make_workflow, ts

WF = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
OUT_KEY = f"outputs/{WF}/9/img_00001.png"
OUTPUT = workflow_pb2.Output(id="o1", node_id="9", filename="img_00001.png", object=object_pb2.ObjectRef(
    key=OUT_KEY, size_bytes=10, content_type="image/png"))


def snapshot(
    seq: int, status: int = workflow_pb2.WORKFLOW_STATUS_ACCEPTED
) -> workflow_service_pb2.WatchWorkflowResponse:
    return workflow_service_pb2.WatchWorkflowResponse(snapshot=make_workflow(WF, status=status, last_seq=seq))


def event(seq: int, **kind: Any) -> workflow_service_pb2.WatchWorkflowResponse:
    return workflow_service_pb2.WatchWorkflowResponse(
        event=workflow_pb2.WorkflowEvent(workflow_id=WF, seq=seq, time=ts(1_700_000_000 + seq), **kind))


def status(seq: int, value: int, **fields: Any) -> workflow_service_pb2.WatchWorkflowResponse:
    return event(seq, status=workflow_pb2.StatusEvent(workflow=make_workflow(WF, status=value, last_seq=seq,
                                                                             **fields)))


LIFE = [
    status(3, workflow_pb2.WORKFLOW_STATUS_RUNNING, prompt_id="p-1", started_at=ts(1_700_000_003)),
    event(4, executing=workflow_pb2.ExecutingEvent(node_id="3", node_type="KSampler")),
    event(5, progress=workflow_pb2.ProgressEvent(node_id="3", node_type="KSampler", value=1, max=20)),
    event(6, output=workflow_pb2.OutputEvent(output=OUTPUT)),
    event(7, log=workflow_pb2.LogEvent(level=workflow_pb2.LOG_LEVEL_INFO, message="done")),
    status(8, workflow_pb2.WORKFLOW_STATUS_COMPLETED, prompt_id="p-1", started_at=ts(1_700_000_003),
           completed_at=ts(1_700_000_008), outputs=[OUTPUT]),
]


def parse(raw: str) -> list[dict[str, Any]]:
    """Blocks of the stream, each as {field: value} (comments under ":"), data parsed as JSON."""
    blocks = []
    for block in raw.split("\n\n"):
        if not block:
            continue
        fields: dict[str, Any] = {}
        for line in block.split("\n"):
            key, _, value = line.partition(": ")
            fields[key] = value
        if "data" in fields:
            fields["data"] = json.loads(fields["data"])
        blocks.append(fields)
    return blocks


async def read_stream(stack: Stack, headers: dict[str, str] | None = None, params: dict[str, str] | None = None) -> Any:
    async with stack.client.stream("GET", f"/v1/workflow/{WF}/subscribe", headers={**AUTH, **(headers or {})},
                                   params=params) as reply:
        raw = "".join([text async for text in reply.aiter_text()])
        return reply, raw


async def test_snapshot_then_every_event_in_order_then_the_stream_closes(stack: Stack) -> None:
    stack.scheduler.workflows[WF] = make_workflow(WF)
    stack.scheduler.watch_scripts[WF] = [snapshot(2), *LIFE]
    reply, raw = await read_stream(stack)
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/event-stream")
    assert reply.headers["cache-control"] == "no-store"
    blocks = parse(raw)
    assert blocks[0] == {"retry": "3000"}
    frames = blocks[1:]
    assert [(f["id"], f["event"]) for f in frames] == [
        ("2", "snapshot"), ("3", "status"), ("4", "executing"), ("5", "progress"), ("6", "output"), ("7", "log"),
        ("8", "status"),
    ]
    assert frames[0]["data"] == {"id": WF, "status": "accepted", "prompt": None, "queue_number": None,
                                 "outputs": [], "cause": None, "started_at": None, "completed_at": None}
    assert frames[1]["data"]["status"] == "running" and frames[1]["data"]["prompt"] == {"prompt_id": "p-1"}
    assert frames[2]["data"] == {"node_id": "3", "node_type": "KSampler"}
    assert frames[3]["data"] == {"node_id": "3", "node_type": "KSampler", "value": 1, "max": 20}
    out = frames[4]["data"]
    assert out["src"].startswith(f"{PUBLIC_URL}/v1/objects/{OUT_KEY}?expires=")
    assert {k: v for k, v in out.items() if k != "src"} == {
        "id": "o1", "workflow_id": WF, "filename": "img_00001.png", "content_type": "image/png", "size": 10,
        "node_id": "9"}
    assert frames[5]["data"] == {"level": "info", "message": "done"}
    final = frames[6]["data"]
    assert final["status"] == "completed" and final["completed_at"] == "2023-11-14T22:13:28Z"
    assert [o["src"].split("?")[0] for o in final["outputs"]] == [f"{PUBLIC_URL}/v1/objects/{OUT_KEY}"]
    [request] = stack.scheduler.watch_requests
    assert (request.id, request.after_seq, request.from_start) == (WF, 0, False)


@pytest.mark.parametrize(
    ("headers", "params", "after_seq", "from_start"),
    [({"Last-Event-ID": "5"}, None, 5, False), (None, {"last_event_id": "5"}, 5, False),
     ({"Last-Event-ID": "0"}, None, 0, True), ({"Last-Event-ID": "5"}, {"last_event_id": "1"}, 5, False)],
    ids=["header", "query", "from-start", "header-wins"],
)
async def test_resuming_passes_the_last_event_id_and_sends_no_snapshot(
    stack: Stack, headers: dict[str, str] | None, params: dict[str, str] | None, after_seq: int, from_start: bool
) -> None:
    stack.scheduler.workflows[WF] = make_workflow(WF)
    stack.scheduler.watch_scripts[WF] = [*LIFE[3:]]
    reply, raw = await read_stream(stack, headers, params)
    assert reply.status_code == 200
    frames = parse(raw)
    assert frames[0] == {"retry": "3000"}
    assert [f["id"] for f in frames[1:]] == ["6", "7", "8"]
    [request] = stack.scheduler.watch_requests
    assert (request.after_seq, request.from_start) == (after_seq, from_start)


async def test_a_resumed_stream_starts_before_its_next_event_without_reading_the_workflow(stack: Stack) -> None:
    # The watch's start (its initial metadata, sent once the scheduler checked the caller and
    # the workflow) is the check: no GetWorkflow, and the 200 does not wait for an event.
    stack.scheduler.workflows[WF] = make_workflow(WF)
    stack.scheduler.watch_scripts[WF] = [None]  # nothing, until the client goes away
    url = f"/v1/workflow/{WF}/subscribe"
    async with stack.client.stream("GET", url, headers={**AUTH, "Last-Event-ID": "4"}) as reply:
        assert reply.status_code == 200
        first = await asyncio.wait_for(anext(reply.aiter_text()), 5)
        assert first.startswith("retry: 3000")
    assert stack.scheduler.get_workflow_calls == 0
    [request] = stack.scheduler.watch_requests
    assert request.after_seq == 4


@pytest.mark.parametrize(
    ("headers", "params", "field"),
    [({"Last-Event-ID": "-1"}, None, "Last-Event-ID"), ({"Last-Event-ID": "abc"}, None, "Last-Event-ID"),
     (None, {"last_event_id": "1.5"}, "last_event_id"), (None, {"last_event_id": "9" * 20}, "last_event_id")],
)
async def test_a_bad_last_event_id_is_400(
    stack: Stack, headers: dict[str, str] | None, params: dict[str, str] | None, field: str
) -> None:
    stack.scheduler.workflows[WF] = make_workflow(WF)
    reply = await stack.client.get(f"/v1/workflow/{WF}/subscribe", headers={**AUTH, **(headers or {})},
                                   params=params)
    assert reply.status_code == 400
    assert reply.json()["details"][0]["field"] == field
    assert stack.scheduler.watch_requests == []


@pytest.mark.parametrize("headers", [{}, {"Last-Event-ID": "3"}], ids=["fresh", "resume"])
async def test_an_unknown_workflow_is_a_json_404(stack: Stack, headers: dict[str, str]) -> None:
    reply = await stack.client.get(f"/v1/workflow/{WF}/subscribe", headers={**AUTH, **headers})
    assert reply.status_code == 404
    assert reply.headers["content-type"] == "application/json"
    assert reply.json() == {"status": 404, "message": "workflow not found", "reason": "WORKFLOW_NOT_FOUND"}


async def test_idle_streams_get_keepalive_comments(make_stack: Any) -> None:
    async with make_stack(sse_keepalive_seconds=0.1) as stack:
        stack.scheduler.workflows[WF] = make_workflow(WF)
        stack.scheduler.watch_scripts[WF] = [snapshot(2), 0.45, LIFE[-1]]
        _, raw = await read_stream(stack)
        blocks = parse(raw)
        assert blocks[1]["event"] == "snapshot" and blocks[-1]["event"] == "status"
        keepalives = blocks[2:-1]
        assert len(keepalives) >= 2 and all(b == {"": "keepalive"} for b in keepalives), keepalives
        assert ": keepalive\n\n" in raw


async def test_a_client_that_goes_away_stops_the_watch(stack: Stack) -> None:
    stack.scheduler.workflows[WF] = make_workflow(WF)
    stack.scheduler.watch_scripts[WF] = [snapshot(2), None]  # then nothing, until cancelled
    async with stack.client.stream("GET", f"/v1/workflow/{WF}/subscribe", headers=AUTH) as reply:
        received = ""
        async for text in reply.aiter_text():
            received += text
            if "event: snapshot" in received:
                break
    await asyncio.wait_for(stack.scheduler.watch_cancelled.wait(), timeout=5)


async def test_a_watch_that_fails_midway_just_ends_the_stream(stack: Stack) -> None:
    stack.scheduler.workflows[WF] = make_workflow(WF)
    stack.scheduler.watch_scripts[WF] = [snapshot(2), LIFE[0], Unavailable("scheduler is stopping")]
    reply, raw = await read_stream(stack)
    assert reply.status_code == 200
    # The client reconnects with Last-Event-ID 3 and misses nothing.
    assert [f.get("id") for f in parse(raw)[1:]] == ["2", "3"]


async def test_the_stream_carries_the_request_id_and_counts_in_the_metrics(stack: Stack) -> None:
    stack.scheduler.workflows[WF] = make_workflow(WF)
    stack.scheduler.watch_scripts[WF] = [snapshot(2), LIFE[-1]]
    reply, raw = await read_stream(stack, {"X-Request-ID": "sse-request-1"})
    assert reply.headers["x-request-id"] == "sse-request-1"
    assert parse(raw)[-1]["event"] == "status"
    metrics = (await stack.client.get("/metrics")).text
    route = 'route="/v1/workflow/{id}/subscribe"'
    assert any(line.startswith("comfyfleet_http_requests_total{") and route in line and 'status="200"' in line
               for line in metrics.splitlines()), metrics
    assert "comfyfleet_sse_subscribers 0.0" in metrics


async def test_subscribing_shares_the_rate_limit_of_the_other_routes(make_stack: Any) -> None:
    async with make_stack(rate_limit_requests=2, rate_limit_window_seconds=60) as stack:
        stack.scheduler.workflows[WF] = make_workflow(WF)
        stack.scheduler.watch_scripts[WF] = [snapshot(2), LIFE[-1]]
        assert (await stack.client.get(f"/v1/workflow/{WF}", headers=AUTH)).status_code == 200
        reply, _ = await read_stream(stack)
        assert reply.status_code == 200
        refused = await stack.client.get(f"/v1/workflow/{WF}/subscribe", headers={**AUTH, "X-Request-ID": "r-429"})
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
        assert refused.json()["reason"] == "RATE_LIMITED" and refused.headers["x-request-id"] == "r-429"
        assert (await stack.client.get(f"/v1/workflow/{WF}", headers=AUTH)).status_code == 429


async def test_head_answers_the_headers_and_ends(stack: Stack) -> None:
    stack.scheduler.workflows[WF] = make_workflow(WF)
    stack.scheduler.watch_scripts[WF] = [snapshot(2), None]  # a live workflow: GET would stay open
    reply = await asyncio.wait_for(stack.client.head(f"/v1/workflow/{WF}/subscribe", headers=AUTH), 5)
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/event-stream")
    await asyncio.wait_for(stack.scheduler.watch_cancelled.wait(), timeout=5)
