"""GET /v1/workflow/{id}/subscribe: a workflow's events as Server-Sent Events.

    retry: 3000                          first
    id: <last_seq>  event: snapshot      unless resuming (Last-Event-ID or ?last_event_id=)
    id: <seq>       event: <kind>        each event after the cursor, in seq order
    : keepalive                          when idle

The frames come from this process's shared feed of the workflow (services.gateway.feeds):
a subscriber joins it when the feed holds every event after the subscriber's cursor, and
otherwise opens a new watch (which becomes the shared feed if there is none). A subscriber
that stops reading is dropped after `GATEWAY_SSE_STALL_SECONDS` or when it falls
`GATEWAY_SSE_BUFFER_FRAMES` behind, without slowing anyone else; it resumes with Last-Event-ID.

The route is an `sse.EventStream`: answered before Starlette's middleware, it does the request
id, access line, metrics, rate limit and error body itself (services.gateway.sse); this module
is its part, the checks and the subscription.
"""

from __future__ import annotations

from comfyfleet.scheduler.v1.workflow_pb2 import WorkflowEvent
from starlette.requests import Request

from services.gateway import presenters, sse
from services.gateway.context import bearer, gateway
from services.gateway.errors import Unavailable
from services.gateway.feeds import Subscription
from services.gateway.metrics import SUBSCRIBE_ROUTE
from services.gateway.scheduler_client import WatchMessage
from services.gateway.storage_client import Storage
from services.gateway.workflow_routes import presign_all


async def _subscribe(request: Request) -> tuple[Subscription | None, bytes | None]:
    """The subscription that feeds this request and the snapshot frame to send first (None
    when resuming); no subscription for a finished workflow (its snapshot, then the end)."""
    gw = gateway(request)
    auth = bearer(request)
    workflow_id = request.path_params["id"]
    last_event_id = sse.last_event_id(request)
    if last_event_id is not None:
        # Resuming: no snapshot, and the next event may be far away, so the caller and the
        # workflow are checked first, to answer 401/404 as JSON rather than as an empty stream:
        # by the new watch's start, or, to join another caller's feed, by reading the workflow.
        subscription = gw.feeds.join(workflow_id, last_event_id)
        if subscription is not None:
            try:
                await gw.scheduler.get_workflow(auth, workflow_id)
            except BaseException:
                subscription.cancel()
                raise
            return subscription, None
        watch = gw.scheduler.watch_workflow(auth, workflow_id, after_seq=last_event_id, from_start=last_event_id == 0)
        try:
            await watch.started()
        except BaseException:
            watch.cancel()
            raise
        return gw.feeds.open(workflow_id, watch, last_event_id), None
    if gw.feeds.has(workflow_id):
        # Someone here already watches it: the snapshot comes from the workflow as it is now.
        workflow = await gw.scheduler.get_workflow(auth, workflow_id)
        first = await render(gw.storage, WatchMessage(snapshot=workflow))
        if workflow.status in presenters.TERMINAL_STATUSES:
            return None, first
        subscription = gw.feeds.join(workflow_id, workflow.last_seq)
        if subscription is None:
            watch = gw.scheduler.watch_workflow(auth, workflow_id, after_seq=workflow.last_seq, from_start=False)
            subscription = gw.feeds.open(workflow_id, watch, workflow.last_seq)
        return subscription, first
    watch = gw.scheduler.watch_workflow(auth, workflow_id, after_seq=0, from_start=False)
    try:
        message = await watch.next()
        if message is None or message.WhichOneof("message") != "snapshot":
            raise Unavailable("the scheduler ended the watch before its snapshot", reason="WATCH_ENDED")
        first = await render(gw.storage, message)
    except BaseException:
        watch.cancel()
        raise
    return gw.feeds.open(workflow_id, watch, message.snapshot.last_seq), first


async def render(storage: Storage, message: WatchMessage) -> bytes | None:
    """The SSE frame of a snapshot or of a one-event message; None for anything else."""
    kind = message.WhichOneof("message")
    if kind == "snapshot":
        workflow = message.snapshot
        srcs = await presign_all(storage, presenters.object_keys(workflow))
        return sse.json_frame(presenters.snapshot(workflow, srcs), event="snapshot", id=workflow.last_seq)
    if kind == "event":
        return await render_event(storage, message.event)
    return None


async def render_event(storage: Storage, event: WorkflowEvent) -> bytes | None:
    """One event's SSE frame; None for a kind this gateway does not show."""
    srcs = await presign_all(storage, presenters.object_keys(event))
    framed = presenters.event_frame(event, srcs)
    if framed is None:
        return None
    name, data = framed
    return sse.json_frame(data, event=name, id=event.seq)


subscribe = sse.EventStream(SUBSCRIBE_ROUTE, _subscribe)
