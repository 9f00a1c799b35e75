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

Thousands of these streams stay open at once, so the route is a bare ASGI app that the
gateway answers before Starlette's middleware (`GatewayApp` in app.py). It does itself what
that middleware does for the other routes, once per request: the request id and the access
line (request_id.py), the metrics (metrics.py), the rate limit (rate_limit.py) and the error
body (errors.py). An open stream then holds one coroutine chain, a task that waits for the
client's disconnect, and a `Subscription`; it writes each batch of frames with one `send`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Message, Receive, Scope, Send

from services.common import logs
from services.common.grpc_telemetry import usable_request_id
from services.gateway import presenters, sse
from services.gateway.context import bearer, gateway
from services.gateway.errors import ComfyfleetError, Unavailable, error_body, error_response
from services.gateway.feeds import IDLE, Subscription
from services.gateway.metrics import SUBSCRIBE_ROUTE, Metrics
from services.gateway.rate_limit import RateLimiter, refusal
from services.gateway.scheduler_client import WatchMessage
from services.gateway.storage_client import Storage
from services.gateway.workflow_form import invalid_field
from services.gateway.workflow_routes import presign_all

log = logging.getLogger(__name__)
access = logging.getLogger("services.gateway.access")  # the access line, as request_id.py writes it

_INT64_MAX = 2**63 - 1
_DIGITS = re.compile(r"[0-9]{1,19}")
_REQUEST_ID = "x-request-id"
_KEEPALIVE = sse.comment("keepalive")


class Subscribe:
    """The ASGI app of the route. Reads the metrics and the rate limiter from the app
    (`app.state.metrics`, `app.state.rate_limiter`)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        metrics: Metrics = scope["app"].state.metrics
        reply = _Reply(send, usable_request_id(Headers(scope=scope).get(_REQUEST_ID)), metrics, scope["method"],
                       started)
        metrics.sse_subscribers.inc()
        bound = logs.request_id.set(reply.request_id)  # as logs.log_context does, without its generator
        try:
            opened = await _open(scope, receive, reply)
            if opened is not None:
                await _stream(send, receive, *opened)
        finally:
            logs.request_id.reset(bound)
            metrics.sse_subscribers.dec()
            access.info('%s %s %d %.1f ms', scope["method"], scope["path"], reply.status,
                        (time.perf_counter() - started) * 1000)


class _Reply:
    """The response's start (with the request id, counted in the metrics), then raw `send`."""

    __slots__ = ("method", "metrics", "request_id", "send", "started", "status")

    def __init__(self, send: Send, request_id: str, metrics: Metrics, method: str, started: float) -> None:
        self.send = send
        self.request_id = request_id
        self.metrics = metrics
        self.method = method
        self.started = started
        self.status = 500  # unless a response starts

    async def send_first(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = int(message["status"])
            headers = [*message.get("headers", []), (_REQUEST_ID.encode(), self.request_id.encode("latin-1"))]
            message = {**message, "headers": headers}
            self.metrics.seconds.labels(self.method, SUBSCRIBE_ROUTE).observe(time.perf_counter() - self.started)
            self.metrics.requests.labels(self.method, SUBSCRIBE_ROUTE, str(self.status)).inc()
        await self.send(message)

    async def respond(self, response: Response, scope: Scope, receive: Receive) -> None:
        await response(scope, receive, self.send_first)


async def _open(scope: Scope, receive: Receive, reply: _Reply) -> tuple[Subscription, bytes] | None:
    """Answers the request up to the stream: the rate limit, the checks, the response's start;
    then the subscription to stream and the bytes to write first (None when all is sent)."""
    limiter: RateLimiter | None = getattr(scope["app"].state, "rate_limiter", None)
    refused = refusal(limiter, scope, time.monotonic()) if limiter is not None else None
    if refused is not None:
        for message in refused:
            await reply.send_first(message)
        return None
    try:
        subscription, first = await _subscribe(Request(scope, receive))
    except ComfyfleetError as err:
        await reply.respond(error_response(err), scope, receive)
        return None
    except Exception:
        log.exception("unexpected error in %s %s", scope["method"], scope["path"])
        await reply.respond(JSONResponse(error_body(500, "internal error", "INTERNAL"), status_code=500),
                            scope, receive)
        return None
    await reply.send_first({"type": "http.response.start", "status": 200, "headers": sse.RAW_HEADERS})
    body = sse.retry() + (first or b"")
    if subscription is None or scope["method"] == "HEAD":
        if subscription is not None:
            subscription.cancel()
        await reply.send({"type": "http.response.body", "body": body, "more_body": False})
        return None
    return subscription, body


async def _stream(send: Send, receive: Receive, subscription: Subscription, body: bytes) -> None:
    """Writes `body`, then the subscription's frames (keep-alives when idle) until it ends:
    after the terminal status, when the watch fails, or when this subscriber fell too far
    behind or stopped reading (the client reconnects with Last-Event-ID)."""
    loop = asyncio.get_running_loop()
    # A write blocked past the stall limit: close the connection (which ends that write), or, on
    # a server that does not show its transport, cancel this task.
    transport = sse.transport_of(send)
    subscription.on_stall = transport.abort if transport is not None else asyncio.current_task().cancel  # type: ignore[union-attr]
    del transport
    disconnect = asyncio.create_task(_until_disconnect(receive, subscription))
    try:
        while True:
            subscription.writing_since = loop.time()
            await send({"type": "http.response.body", "body": body, "more_body": True})
            subscription.writing_since = None
            frames = await subscription.next()
            if frames is None:
                break
            body = _KEEPALIVE if frames is IDLE else frames
        if subscription.dropped:
            log.info("dropped an SSE subscriber that fell %d frames behind", subscription.capacity)
        if not subscription.gone:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
    finally:
        disconnect.cancel()
        subscription.cancel()


async def _until_disconnect(receive: Receive, subscription: Subscription) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    subscription.cancel()


async def _subscribe(request: Request) -> tuple[Subscription | None, bytes | None]:
    """The subscription that feeds this request and the snapshot frame to send first (None
    when resuming); no subscription for a finished workflow (its snapshot, then the end)."""
    gw = gateway(request)
    auth = bearer(request)
    workflow_id = request.path_params["id"]
    last_event_id = _last_event_id(request)
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
        return subscription, None
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


subscribe: Callable[[Scope, Receive, Send], Awaitable[None]] = Subscribe()
