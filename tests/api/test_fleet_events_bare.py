"""GET /v1/events answered before the middleware (as subscribe is, services.gateway.sse): its own
request id, access line and metrics, the rate limit it shares with the other routes, HEAD, and
a stalled reader's connection closed without uvicorn logging an error.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import pytest

from tests.api.conftest import Api
from tests.api.test_fleet_events import WAIT, change, events, user_id
from tests.api.test_workflows import create

ACCESS = "services.gateway.access"


async def eventually(condition: Callable[[], bool], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while not condition():
        assert loop.time() < deadline, what
        await asyncio.sleep(0.05)


def sample(metrics: str, prefix: str) -> float | None:
    """The value of the first line of the exposition that starts with `prefix`."""
    return next((float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith(prefix)), None)


class Recorded(logging.Handler):
    """The messages a logger emits at `level` or above."""

    def __init__(self, level: int) -> None:
        super().__init__(level)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def recorded(logger: str, level: int) -> Iterator[Recorded]:
    log, handler = logging.getLogger(logger), Recorded(level)
    previous = log.level
    log.setLevel(min(level, log.getEffectiveLevel()))
    log.addHandler(handler)
    try:
        yield handler
    finally:
        log.removeHandler(handler)
        log.setLevel(previous)


async def test_the_stream_has_its_request_id_access_line_and_metrics(api: Api) -> None:
    auth = await api.user("fleet-bare-id")
    route = 'route="/v1/events"'
    async with api.gateway() as client:  # metrics of its own
        with recorded(ACCESS, logging.INFO) as access:
            async with events(client, {**auth, "X-Request-ID": "fleet-request-1"}) as stream:
                assert stream.reply.headers["x-request-id"] == "fleet-request-1"
                metrics = (await client.get("/metrics")).text
                assert sample(metrics, "comfyfleet_sse_subscribers ") == 1, "counted as an open stream"
                assert sample(metrics, f'comfyfleet_http_requests_total{{method="GET",{route},status="200"}}') == 1
            await eventually(lambda: any(m.startswith("GET /v1/events 200 ") for m in access.messages),
                             "the access line once the client hung up")
        metrics = (await client.get("/metrics")).text
    assert sample(metrics, "comfyfleet_sse_subscribers ") == 0
    assert sample(metrics, f'comfyfleet_http_request_seconds_count{{method="GET",{route}}}') == 1


async def test_the_stream_shares_the_rate_limit_of_the_other_routes(api: Api) -> None:
    auth = await api.user("fleet-bare-limit")
    async with api.gateway(rate_limit_requests=2, rate_limit_window_seconds=60) as client:
        assert (await client.get("/v1/user", headers=auth)).status_code == 200
        async with events(client, auth):
            pass
        refused = await client.get("/v1/events", headers={**auth, "X-Request-ID": "fleet-429"})
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
        assert refused.json()["reason"] == "RATE_LIMITED" and refused.headers["x-request-id"] == "fleet-429"
        assert (await client.get("/v1/user", headers=auth)).status_code == 429


async def test_head_answers_the_headers_and_lets_go_of_the_watch(api: Api) -> None:
    auth = await api.user("fleet-bare-head")
    me = await user_id(api, auth)
    reply = await asyncio.wait_for(api.client.head("/v1/events", headers=auth), WAIT)
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/event-stream")
    assert reply.content == b""
    await eventually(lambda: api.scheduler.execution.hub.user_watcher_count(me) == 0, "the watch was not ended")
    bad = await api.client.head("/v1/events", headers={**auth, "Last-Event-ID": "x"})
    assert bad.status_code == 400 and bad.headers["content-type"] == "application/json"


async def test_a_stalled_reader_is_cut_off_without_a_server_error(api: Api) -> None:
    auth = await api.user("fleet-bare-stall")
    me = await user_id(api, auth)
    workflow = await create(api, auth)
    hub = api.scheduler.execution.hub
    async with api.gateway(sse_stall_seconds=0.5) as client:
        with recorded("uvicorn.error", logging.ERROR) as server_errors, recorded(ACCESS, logging.INFO) as access:
            async with client.stream("GET", "/v1/events", headers=auth, timeout=WAIT) as stalled:
                assert stalled.status_code == 200
                await eventually(lambda: hub.user_watcher_count(me) == 1, "the stream did not start")
                # ~8 MB of events: more than the socket buffers hold for a reader that reads nothing.
                for _ in range(8):
                    await change(api, workflow["id"], 16, size=64 * 1024)
                await eventually(lambda: hub.user_watcher_count(me) == 0, "the stalled reader was not dropped")
                with pytest.raises(httpx.RemoteProtocolError):  # the connection was closed mid-body
                    await asyncio.wait_for(stalled.aread(), WAIT)
            await eventually(lambda: any(m.startswith("GET /v1/events 200 ") for m in access.messages),
                             "the access line of the dropped stream")
    assert server_errors.messages == [], "the stalled client's response was ended cleanly"


async def test_a_replay_longer_than_the_buffer_reaches_a_reader_that_reads(api: Api) -> None:
    """The stored events come faster than the client takes them; one that reads on is not dropped."""
    auth = await api.user("fleet-bare-replay")
    workflow = await create(api, auth)
    for _ in range(4):
        await change(api, workflow["id"], 100, size=1024)
    async with api.gateway(sse_buffer_frames=64) as client, events(client, auth, last_event_id="0") as stream:
        frames = await stream.frames(401)
    assert [int(f["id"]) for f in frames] == list(range(1, 402))
