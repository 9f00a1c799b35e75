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

One EventService.WatchEvents stream per subscriber. The stream never ends by itself: when the
scheduler ends the watch (this gateway fell behind its buffer), it is reopened after the last
event sent. A client that stops reading is dropped after GATEWAY_SSE_STALL_SECONDS; a
scheduler error ends the stream; either way the client resumes with Last-Event-ID.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from contextlib import aclosing

from comfyfleet.scheduler.v1 import workflow_pb2
from starlette.requests import Request
from starlette.responses import Response

from services.gateway import presenters, sse
from services.gateway.context import Gateway, bearer, gateway
from services.gateway.errors import ComfyfleetError, Unavailable
from services.gateway.scheduler_client import EventsWatch
from services.gateway.storage_client import Storage
from services.gateway.workflow_form import invalid_field
from services.gateway.workflow_routes import presign_all

log = logging.getLogger(__name__)

# Last-Event-ID 0 replays at most this many of the newest stored events.
REPLAY_ALL_EVENTS = 1000
# Before reopening a watch the scheduler ended (so a watch that keeps ending cannot spin).
REOPEN_PAUSE_SECONDS = 0.2

_INT64_MAX = 2**63 - 1
_DIGITS = re.compile(r"[0-9]{1,19}")


async def events(request: Request) -> Response:
    """GET /v1/events: SSE of the caller's events; resumes after Last-Event-ID (or ?last_event_id=)."""
    gw = gateway(request)
    auth = bearer(request)
    cursor = _last_event_id(request)
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
    return sse.EventStreamResponse(_event_stream(gw, auth, watch, cursor, only, start),
                                   stall_seconds=gw.settings.sse_stall_seconds)


def _last_event_id(request: Request) -> int | None:
    header = request.headers.get("last-event-id")
    raw = header if header is not None else request.query_params.get("last_event_id")
    if raw is None:
        return None
    raw = raw.strip()
    if not _DIGITS.fullmatch(raw) or int(raw) > _INT64_MAX:
        name = "Last-Event-ID" if header is not None else "last_event_id"
        raise invalid_field(name, f"{name} must be an integer >= 0", value=raw)
    return int(raw)


def _workflow_filter(request: Request) -> str | None:
    raw = request.query_params.get("workflow_id")
    if raw is None:
        return None
    if not raw.strip() or len(raw) > 100:
        raise invalid_field("workflow_id", "workflow_id must be a workflow id", value=raw[:100])
    return raw.strip()


async def _event_stream(gw: Gateway, auth: str, watch: EventsWatch, cursor: int, only: str | None,
                        start: bytes | None) -> AsyncIterator[bytes]:
    """retry, `start` (if any), then a frame per event after `cursor` (keep-alives when idle),
    reopening the watch after the last event whenever the scheduler ends it."""
    keepalive = sse.comment("keepalive")
    try:
        yield sse.retry()
        if start is not None:
            yield start
        while True:
            async with aclosing(sse.with_keepalive(watch.next, gw.settings.sse_keepalive_seconds)) as messages:
                async for message in messages:
                    if message is None:
                        yield keepalive
                        continue
                    if message.WhichOneof("message") != "event" or message.event.user_seq <= cursor:
                        continue
                    event = message.event
                    cursor = event.user_seq
                    if only is not None and event.workflow_id != only:
                        continue
                    if (frame := await render(gw.storage, event)) is not None:
                        yield frame
            watch.cancel()
            log.info("the scheduler ended a fleet-wide watch; reopening it after %d", cursor)
            await asyncio.sleep(REOPEN_PAUSE_SECONDS)
            watch = gw.scheduler.watch_events(auth, after_user_seq=cursor, replay=True, max_replay=0)
    except ComfyfleetError as err:
        log.info("fleet-wide stream ended: %s (%s)", err.message, err.reason)
    finally:
        watch.cancel()


async def render(storage: Storage, event: workflow_pb2.WorkflowEvent) -> bytes | None:
    """The frame of one event: the per-workflow stream's JSON plus workflow_id, id = user_seq."""
    framed = presenters.event_frame(event, await presign_all(storage, presenters.object_keys(event)))
    if framed is None:
        return None
    name, data = framed
    return sse.json_frame({**data, "workflow_id": event.workflow_id}, event=name, id=event.user_seq)
