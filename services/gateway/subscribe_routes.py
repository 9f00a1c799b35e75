"""GET /v1/workflow/{id}/subscribe: a workflow's events as Server-Sent Events.

    retry: 3000                          first
    id: <last_seq>  event: snapshot      unless resuming (Last-Event-ID or ?last_event_id=)
    id: <seq>       event: <kind>        each event after the cursor, in seq order
    : keepalive                          when idle

The frames come from this process's shared feed of the workflow (services.gateway.feeds):
a subscriber joins it when the feed holds every event after the subscriber's cursor, and
otherwise opens a new watch (which becomes the shared feed if there is none). A subscriber
that stops reading is dropped after `GATEWAY_SSE_STALL_SECONDS` (services.gateway.sse) or
when its queue is full, without slowing anyone else; it resumes with Last-Event-ID.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response

from services.gateway import presenters, sse
from services.gateway.context import Gateway, bearer, gateway
from services.gateway.errors import ComfyfleetError, Unavailable
from services.gateway.feeds import IDLE, Subscription
from services.gateway.scheduler_client import WatchMessage
from services.gateway.storage_client import Storage
from services.gateway.workflow_form import invalid_field
from services.gateway.workflow_routes import presign_all

log = logging.getLogger(__name__)

_INT64_MAX = 2**63 - 1
_DIGITS = re.compile(r"[0-9]{1,19}")


async def subscribe(request: Request) -> Response:
    """GET /v1/workflow/{id}/subscribe: SSE; resumes after Last-Event-ID (or ?last_event_id=)."""
    gw = gateway(request)
    auth = bearer(request)
    workflow_id = request.path_params["id"]
    last_event_id = _last_event_id(request)
    first: bytes | None = None
    if last_event_id is not None:
        # Resuming: no snapshot, and the next event may be far away, so check the workflow
        # first to answer 401/404 as JSON rather than as an empty stream.
        await gw.scheduler.get_workflow(auth, workflow_id)
        subscription = gw.feeds.join(workflow_id, last_event_id)
        if subscription is None:
            watch = gw.scheduler.watch_workflow(
                auth, workflow_id, after_seq=last_event_id, from_start=last_event_id == 0
            )
            subscription = gw.feeds.open(workflow_id, watch, last_event_id)
    elif gw.feeds.has(workflow_id):
        # Someone here already watches it: the snapshot comes from the workflow as it is now.
        workflow = await gw.scheduler.get_workflow(auth, workflow_id)
        first = await render(gw.storage, WatchMessage(snapshot=workflow))
        if workflow.status in presenters.TERMINAL_STATUSES:
            return sse.EventStreamResponse(_closed_stream(first))
        subscription = gw.feeds.join(workflow_id, workflow.last_seq)
        if subscription is None:
            watch = gw.scheduler.watch_workflow(auth, workflow_id, after_seq=workflow.last_seq, from_start=False)
            subscription = gw.feeds.open(workflow_id, watch, workflow.last_seq)
    else:
        watch = gw.scheduler.watch_workflow(auth, workflow_id, after_seq=0, from_start=False)
        try:
            message = await watch.next()
        except BaseException:
            watch.cancel()
            raise
        if message is None or message.WhichOneof("message") != "snapshot":
            watch.cancel()
            raise Unavailable("the scheduler ended the watch before its snapshot", reason="WATCH_ENDED")
        try:
            first = await render(gw.storage, message)
        except BaseException:
            watch.cancel()
            raise
        subscription = gw.feeds.open(workflow_id, watch, message.snapshot.last_seq)
    return sse.EventStreamResponse(_event_stream(gw, subscription, first),
                                   stall_seconds=gw.settings.sse_stall_seconds)


def _last_event_id(request: Request) -> int | None:
    header = request.headers.get("last-event-id")
    raw = header if header is not None else request.query_params.get("last_event_id")
    if raw is None:
        return None
    raw = raw.strip()
    if not _DIGITS.fullmatch(raw) or int(raw) > _INT64_MAX:
        field = "Last-Event-ID" if header is not None else "last_event_id"
        raise invalid_field(field, f"{field} must be an integer >= 0", value=raw)
    return int(raw)


async def _closed_stream(first: bytes | None) -> AsyncIterator[bytes]:
    yield sse.retry()
    if first is not None:
        yield first


async def _event_stream(gw: Gateway, subscription: Subscription, first: bytes | None) -> AsyncIterator[bytes]:
    """The SSE body: retry, the snapshot (if any), then each frame, keep-alives when idle.

    Ends when the subscription ends (after the terminal status, when the watch fails, or when
    this subscriber fell too far behind): the client reconnects with Last-Event-ID.
    """
    try:
        yield sse.retry()
        if first is not None:
            yield first
        keepalive = sse.comment("keepalive")
        while (frame := await subscription.next()) is not None:
            yield keepalive if frame is IDLE else frame
        if subscription.dropped:
            log.info("dropped an SSE subscriber that fell %d frames behind", subscription.capacity)
    except ComfyfleetError as err:
        log.info("subscription ended: %s (%s)", err.message, err.reason)
    finally:
        subscription.cancel()


async def render(storage: Storage, message: WatchMessage) -> bytes | None:
    """One SSE frame for one watch message; None for a kind this gateway does not know."""
    kind = message.WhichOneof("message")
    if kind == "snapshot":
        workflow = message.snapshot
        srcs = await presign_all(storage, presenters.object_keys(workflow))
        return sse.json_frame(presenters.snapshot(workflow, srcs), event="snapshot", id=workflow.last_seq)
    if kind == "event":
        event = message.event
        srcs = await presign_all(storage, presenters.object_keys(event))
        framed = presenters.event_frame(event, srcs)
        if framed is None:
            return None
        name, data = framed
        return sse.json_frame(data, event=name, id=event.seq)
    return None
