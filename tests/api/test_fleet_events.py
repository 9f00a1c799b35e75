"""GET /v1/events on the gateway in front of the real scheduler: keep-alives, the stream going
on when the scheduler ends its watch, a stalled reader dropped while a fast one keeps reading,
the cursor as a query parameter, and the workflow filter.

Events are made as the scheduler makes them (WorkflowStore.change, then EventHub.publish), so a
test controls how many arrive and how fast.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from services.scheduler.db.identity_store import API
from services.scheduler.workflows import log_event
from tests.api.conftest import Api
from tests.api.test_workflows import create

WAIT = 10.0


async def change(api: Api, workflow_id: str, n_events: int = 1, size: int = 10) -> None:
    done = await api.scheduler.store.change(
        workflow_id, lambda _r, _o: [log_event(f"{i:04d}" + "x" * size) for i in range(n_events)])
    api.scheduler.execution.hub.publish(done.events)


async def user_id(api: Api, auth: dict[str, str]) -> str:
    return (await api.scheduler.identity.authenticate(auth["Authorization"].split()[1], API)).id


class Reader:
    """An open /v1/events response, read block by block ({field: value}; comments as {":": text})."""

    def __init__(self, reply: httpx.Response) -> None:
        self.reply = reply
        self._lines = reply.aiter_lines()
        self.started_at: int | None = None

    async def block(self) -> dict[str, str]:
        fields: dict[str, str] = {}
        async for line in self._lines:
            if line == "":
                if fields:
                    return fields
                continue
            key, _, value = line.partition(":")
            fields[key or ":"] = value.removeprefix(" ")
        raise AssertionError("the stream ended")

    async def frames(self, n: int) -> list[dict[str, Any]]:
        """The next `n` event frames (keep-alives skipped), data parsed."""
        out: list[dict[str, Any]] = []
        while len(out) < n:
            block = await asyncio.wait_for(self.block(), WAIT)
            if "data" in block:
                out.append({**block, "data": json.loads(block["data"])})
        return out


@asynccontextmanager
async def events(client: httpx.AsyncClient, auth: dict[str, str], **params: str) -> AsyncIterator[Reader]:
    async with client.stream("GET", "/v1/events", headers=auth, params=params, timeout=WAIT) as reply:
        assert reply.status_code == 200, await reply.aread()
        assert reply.headers["content-type"].startswith("text/event-stream")
        reader = Reader(reply)
        assert await reader.block() == {"retry": "3000"}
        if "last_event_id" not in params and "Last-Event-ID" not in auth:
            # A live start: the caller's last number, as an id without an event.
            reader.started_at = int((await reader.block())["id"])
        yield reader


async def test_an_idle_stream_gets_keepalives_and_then_the_next_event(api: Api) -> None:
    auth = await api.user("fleet-idle")
    async with api.gateway(sse_keepalive_seconds=0.2) as client, events(client, auth) as stream:
        assert stream.started_at == 0
        assert await asyncio.wait_for(stream.block(), WAIT) == {":": "keepalive"}
        assert await asyncio.wait_for(stream.block(), WAIT) == {":": "keepalive"}
        workflow = await create(api, auth)
        [frame] = await stream.frames(1)
    assert frame["id"] == "1" and frame["event"] == "status"
    assert frame["data"]["workflow_id"] == workflow["id"] and frame["data"]["status"] == "accepted"
    assert "user_id" not in frame["data"] or frame["data"]["user_id"] == workflow["user_id"]


async def test_the_stream_goes_on_when_the_scheduler_ends_the_watch(api: Api) -> None:
    """The scheduler ends a watch that falls `capacity` events behind; the gateway reopens it
    after the last event it sent: the client sees one stream, every id once."""
    auth = await api.user("fleet-burst")
    workflow = await create(api, auth)
    hub = api.scheduler.execution.hub
    async with events(api.client, auth, last_event_id="1") as stream:
        capacity, hub.capacity = hub.capacity, 3
        try:
            await change(api, workflow["id"], 12)  # 12 events offered at once: the watch overflows
        finally:
            hub.capacity = capacity
        frames = await stream.frames(12)
        await change(api, workflow["id"])
        frames += await stream.frames(1)
    assert [int(f["id"]) for f in frames] == list(range(2, 15))
    assert [f["data"]["message"][:4] for f in frames] == [f"{i:04d}" for i in range(12)] + ["0000"]


async def test_a_stalled_reader_is_dropped_while_a_fast_one_keeps_reading(api: Api) -> None:
    auth = await api.user("fleet-stall")
    me = await user_id(api, auth)
    workflow = await create(api, auth)
    hub = api.scheduler.execution.hub
    async with api.gateway(sse_stall_seconds=0.5) as client, events(client, auth) as fast:
        assert fast.started_at == 1  # the workflow's first event
        async with client.stream("GET", "/v1/events", headers=auth, timeout=WAIT) as stalled:
            assert stalled.status_code == 200
            assert hub.user_watcher_count(me) == 2
            # ~8 MB of events: more than the socket buffers hold for a reader that reads nothing.
            for _ in range(8):
                await change(api, workflow["id"], 16, size=64 * 1024)
                got = await fast.frames(16)
                assert got[-1]["data"]["message"].startswith("0015")
            # The stalled one is dropped (its watch of the scheduler ends); the fast one got everything.
            loop = asyncio.get_running_loop()
            deadline = loop.time() + WAIT
            while hub.user_watcher_count(me) != 1:
                assert loop.time() < deadline, "the stalled reader was not dropped"
                await asyncio.sleep(0.05)
        await change(api, workflow["id"])
        [last] = await fast.frames(1)
    assert last["id"] == str(1 + 8 * 16 + 1)


async def test_the_query_cursor_resumes_and_the_workflow_filter_keeps_one_workflow(api: Api) -> None:
    auth = await api.user("fleet-filter")
    first, second = await create(api, auth), await create(api, auth)
    await change(api, first["id"], 2)
    await change(api, second["id"], 2)  # ids: 1 first, 2 second, 3-4 first, 5-6 second

    async with events(api.client, auth, last_event_id="0") as everything:
        assert [f["id"] for f in await everything.frames(6)] == ["1", "2", "3", "4", "5", "6"]
    async with events(api.client, auth, last_event_id="2", workflow_id=second["id"]) as only:
        frames = await only.frames(2)
    assert [(f["id"], f["data"]["workflow_id"]) for f in frames] == [("5", second["id"]), ("6", second["id"])]
    other = await api.user("fleet-filter-other")
    async with api.gateway(sse_keepalive_seconds=0.2) as client, events(client, other, last_event_id="0") as nothing:
        await change(api, first["id"])
        assert await asyncio.wait_for(nothing.block(), WAIT) == {":": "keepalive"}
        assert await asyncio.wait_for(nothing.block(), WAIT) == {":": "keepalive"}


async def test_bad_requests_are_4xx_with_the_error_body(api: Api) -> None:
    auth = await api.user("fleet-bad")
    for params, headers, field in (({"last_event_id": "x"}, {}, "last_event_id"),
                                   ({}, {"Last-Event-ID": "99999999999999999999"}, "Last-Event-ID"),
                                   ({"workflow_id": " "}, {}, "workflow_id")):
        reply = await api.client.get("/v1/events", params=params, headers={**auth, **headers})
        assert reply.status_code == 400, reply.text
        body = reply.json()
        assert body["status"] == 400 and body["reason"] == "INVALID_FIELD" and body["details"][0]["field"] == field
    reply = await api.client.get("/v1/events")
    assert reply.status_code == 401 and set(reply.json()) >= {"status", "message", "reason"}
    reply = await api.client.get("/v1/events", headers={"Authorization": "Bearer wrong"})
    assert reply.status_code == 401 and reply.json()["status"] == 401
