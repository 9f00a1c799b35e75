"""`client.events()` (GET /v1/events) against the running suite: the history replayed with the
workflow of each event, resumed across broken connections without a gap or a repeat, and the
async client following a workflow live."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
from comfyfleet import AsyncClient, Client
from comfyfleet.models import AnyEvent, StatusEvent

from services.devrun import Suite
from tests.sdk.conftest import WORKFLOW, png
from tests.sdk.test_workflows import CutStream, create


class CuttingEvents(httpx.HTTPTransport):
    """Cuts the first /v1/events stream after `cuts[0]` frames (a reset), the second after
    `cuts[1]` (a clean close); records each request's Last-Event-ID."""

    def __init__(self, cuts: list[int]) -> None:
        super().__init__()
        self.cuts = list(cuts)
        self.last_event_ids: list[str | None] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.url.path != "/v1/events":
            return response
        self.last_event_ids.append(request.headers.get("last-event-id"))
        if not self.cuts:
            return response
        limit, reset = self.cuts.pop(0), len(self.cuts) == 1
        return httpx.Response(response.status_code, headers=response.headers,
                              stream=CutStream(response, limit, reset), request=request)


def terminal_of(events: list[AnyEvent]) -> set[str]:
    return {e.workflow_id for e in events if isinstance(e, StatusEvent) and e.is_terminal}


def test_events_replay_the_history_and_resume_across_cuts(suite: Suite, photo_file: Path) -> None:
    with Client(suite.gateway_url, token=suite.token, timeout=30) as plain:
        ours = [create(plain, photo_file), create(plain, photo_file)]
        logs = {wf: [e.kind for e in plain.workflows.watch(wf, from_start=True)] for wf in ours}
    cutting = CuttingEvents(cuts=[3, 2])
    reads = []
    for transport in (httpx.HTTPTransport(), cutting):
        seen: list[AnyEvent] = []
        with Client(suite.gateway_url, token=suite.token, transport=transport) as client:
            for event in client.events(after=0):
                seen.append(event)
                if set(ours) <= terminal_of(seen):
                    break
        reads.append(seen)
    whole, cut = reads

    seqs = [e.seq for e in cut]
    assert seqs == sorted(set(seqs)), "in order, nothing twice"
    assert seqs == [e.seq for e in whole], "nothing missed across the cuts (deleted workflows leave gaps)"
    assert [(e.kind, e.workflow_id) for e in cut] == [(e.kind, e.workflow_id) for e in whole]
    assert cutting.last_event_ids[:3] == ["0", str(seqs[2]), str(seqs[4])]
    for wf in ours:
        assert [e.kind for e in cut if e.workflow_id == wf] == logs[wf]


async def test_the_async_client_follows_a_workflow_live(suite: Suite) -> None:
    async with AsyncClient(suite.gateway_url, token=suite.token, timeout=30) as client:
        stream = client.events()
        first = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0.5)  # (connecting; an event before the connection is simply not shown)
        created = await client.workflows.create(WORKFLOW, name="fleet", params={"prefix": "fleet"},
                                                files={"photo": ("cat.png", png(40, 30))})
        seen = [await asyncio.wait_for(first, 30)]
        while created.id not in terminal_of(seen):
            seen.append(await asyncio.wait_for(anext(stream), 30))
        await stream.aclose()
        log = [e.kind async for e in client.workflows.watch(created.id, from_start=True)]
    mine = [e for e in seen if e.workflow_id == created.id]
    assert [e.kind for e in mine] == log[len(log) - len(mine):], "a tail of the workflow's log, in order"
    assert len(mine) >= log.count("progress"), "its run was followed live"
    assert [e.seq for e in seen] == sorted({e.seq for e in seen})
