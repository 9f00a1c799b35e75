"""GET /v1/events (+): every event of the caller's workflows as Server-Sent Events.

    retry: 3000                              first
    id: <user_seq>  event: <kind>            each event, in the caller's user_seq order
    : keepalive                              when idle

`id:` is the caller's own event number (user_seq: 1, 2, 3, ... across all their workflows,
kept by the scheduler, so it means the same on every gateway process); `data:` is the JSON
the per-workflow stream sends for that event, plus `workflow_id`.

Where it starts:
- no Last-Event-ID (header) or ?last_event_id=: live, from the next event on; the stream then
  begins with a frame of only `id: <the caller's last number>` (it sets the client's last
  event id without an event), so a reconnect before the first event misses nothing either;
- Last-Event-ID n > 0: every stored event after n, then live ones, no gap, nothing twice;
- Last-Event-ID 0: the stored history, its newest REPLAY_ALL_EVENTS events, then live ones.
?workflow_id= keeps only that workflow's events (ids stay user_seq, so resuming works).

One EventService.WatchEvents stream per subscriber, read by a feed of its own
(`Feeds.follow`, services.gateway.feeds). The stream never ends by itself: when the scheduler
ends the watch (this gateway fell behind its buffer), it is reopened after the last event
it gave. A client that stops reading is dropped after GATEWAY_SSE_STALL_SECONDS, or when it falls
GATEWAY_SSE_BUFFER_FRAMES behind; a scheduler error ends the stream; either way the client
resumes with Last-Event-ID.

The route is an `sse.EventStream`, as GET /v1/workflow/{id}/subscribe is: answered before
Starlette's middleware, it does the request id, access line, metrics, rate limit and error
body itself (services.gateway.sse); this module is its part, the checks and the subscription.
"""

from __future__ import annotations

import asyncio
import logging

from comfyfleet.scheduler.v1 import workflow_pb2
from starlette.requests import Request

from services.gateway import presenters, sse
from services.gateway.context import Gateway, bearer, gateway
from services.gateway.errors import Unavailable
from services.gateway.feeds import Subscription
from services.gateway.scheduler_client import EventsWatch
from services.gateway.storage_client import Storage
from services.gateway.workflow_form import invalid_field
from services.gateway.workflow_routes import presign_all

log = logging.getLogger(__name__)

ROUTE = "/v1/events"
# Last-Event-ID 0 replays at most this many of the newest stored events.
REPLAY_ALL_EVENTS = 1000
# Before reopening a watch the scheduler ended (so a watch that keeps ending cannot spin).
REOPEN_PAUSE_SECONDS = 0.2


async def _subscribe(request: Request) -> tuple[Subscription, bytes | None]:
    """The subscription to the caller's events after the cursor (Last-Event-ID or
    ?last_event_id=), and, for a live start, the id-only frame to send first."""
    gw = gateway(request)
    auth = bearer(request)
    cursor = sse.last_event_id(request)
    only = _workflow_filter(request)
    if cursor is None:
        watch = gw.scheduler.watch_events(auth, after_user_seq=0, replay=False, max_replay=0)
    else:
        watch = gw.scheduler.watch_events(auth, after_user_seq=cursor, replay=True,
                                          max_replay=REPLAY_ALL_EVENTS if cursor == 0 else 0)
    try:
        # The first message says the watch is on (and answers 401 as JSON, not as an empty stream).
        first = await watch.next()
        if first is None or first.WhichOneof("message") != "started_at_user_seq":
            raise Unavailable("the scheduler ended the watch before it started", reason="WATCH_ENDED")
    except BaseException:
        watch.cancel()
        raise
    start: bytes | None = None
    if cursor is None:
        cursor = first.started_at_user_seq
        start = f"id: {cursor}\n\n".encode()  # no data: sets the client's last id, no event
    return gw.feeds.follow("the fleet-wide events of a caller", _FleetFrames(gw, auth, watch, cursor, only)), start


def _workflow_filter(request: Request) -> str | None:
    raw = request.query_params.get("workflow_id")
    if raw is None:
        return None
    if not raw.strip() or len(raw) > 100:
        raise invalid_field("workflow_id", "workflow_id must be a workflow id", value=raw[:100])
    return raw.strip()


class _FleetFrames:
    """The frames of the caller's events after `cursor` (only workflow `only`'s, if set), each
    with id = user_seq, reopening the watch after the last event whenever the scheduler ends it."""

    def __init__(self, gw: Gateway, auth: str, watch: EventsWatch, cursor: int, only: str | None) -> None:
        self._gw = gw
        self._auth = auth
        self._watch = watch
        self._cursor = cursor
        self._only = only

    async def next(self) -> tuple[int, bytes] | None:
        while True:
            message = await self._watch.next()
            if message is None:
                self._watch.cancel()
                log.info("the scheduler ended a fleet-wide watch; reopening it after %d", self._cursor)
                await asyncio.sleep(REOPEN_PAUSE_SECONDS)
                self._watch = self._gw.scheduler.watch_events(self._auth, after_user_seq=self._cursor, replay=True,
                                                              max_replay=0)
                continue
            if message.WhichOneof("message") != "event" or message.event.user_seq <= self._cursor:
                continue
            event = message.event
            self._cursor = event.user_seq
            if self._only is not None and event.workflow_id != self._only:
                continue
            if (frame := await render(self._gw.storage, event)) is not None:
                return event.user_seq, frame

    def cancel(self) -> None:
        self._watch.cancel()


async def render(storage: Storage, event: workflow_pb2.WorkflowEvent) -> bytes | None:
    """The frame of one event: the per-workflow stream's JSON plus workflow_id, id = user_seq."""
    framed = presenters.event_frame(event, await presign_all(storage, presenters.object_keys(event)))
    if framed is None:
        return None
    name, data = framed
    return sse.json_frame({**data, "workflow_id": event.workflow_id}, event=name, id=event.user_seq)


events = sse.EventStream(ROUTE, _subscribe)
