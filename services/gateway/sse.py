"""Server-Sent Events: frame encoding, and `EventStream`, the bare ASGI app of an SSE route.

Frames use `\n` line endings (the SSE spec accepts `\n`, `\r\n` and `\r`):

    retry: 3000\n\n                                      once, first
    id: 7\nevent: progress\ndata: {"value": 3}\n\n       one per event
    : keepalive\n\n                                      when idle

Thousands of SSE streams stay open at once (GET /v1/workflow/{id}/subscribe, GET /v1/events),
so their routes are bare ASGI apps that the gateway answers before Starlette's middleware
(`GatewayApp` in app.py). `EventStream` does itself what that middleware (edge.py) does for
the other routes, once per request, with the same `edge.Reply`: the request id and the access
line, the metrics, the rate limit and the error body. The route gives
only its `Subscribe` function: the checks, the bytes to send first, and the `Subscription`
(feeds.py) whose frames follow. An open stream then holds one coroutine chain, a task that
waits for the client's disconnect, and the subscription; it writes each batch of frames with
one `send`. Keep-alives and dropping a client that stopped reading come from the two timers
of `Feeds` (one each per process); a dropped client's connection is closed, and it resumes
with Last-Event-ID.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from services.common import logs
from services.gateway.edge import Reply
from services.gateway.errors import ComfyfleetError, error_body, error_response
from services.gateway.feeds import IDLE, Subscription
from services.gateway.metrics import Metrics
from services.gateway.rate_limit import RateLimiter, refusal
from services.gateway.workflow_form import invalid_field

log = logging.getLogger(__name__)

RETRY_MILLISECONDS = 3000
_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-store"),
            (b"x-accel-buffering", b"no")]

_INT64_MAX = 2**63 - 1
_DIGITS = re.compile(r"[0-9]{1,19}")

T = TypeVar("T")

# A route's part of an SSE request: the subscription whose frames follow (None: the stream
# ends after the first bytes) and the frames to send after `retry` (None: nothing).
Subscribe = Callable[[Request], Awaitable[tuple[Subscription | None, bytes | None]]]


def frame(data: str, *, event: str | None = None, id: int | str | None = None) -> bytes:
    """One event frame; a multi-line `data` becomes several `data:` lines."""
    lines: list[str] = []
    if id is not None:
        lines.append(f"id: {_single_line(str(id))}")
    if event is not None:
        lines.append(f"event: {_single_line(event)}")
    lines.extend(f"data: {line}" for line in data.splitlines() or [""])
    return ("\n".join(lines) + "\n\n").encode("utf-8")


def json_frame(data: Any, *, event: str, id: int | str) -> bytes:
    """A frame whose data is compact JSON (one line: json.dumps never emits a raw newline)."""
    return frame(json.dumps(data, separators=(",", ":"), ensure_ascii=False), event=event, id=id)


def retry(milliseconds: int = RETRY_MILLISECONDS) -> bytes:
    """Tells the client how long to wait before reconnecting."""
    return f"retry: {milliseconds}\n\n".encode()


def comment(text: str) -> bytes:
    """A comment line: ignored by clients, keeps proxies from closing an idle stream."""
    return f": {_single_line(text)}\n\n".encode()


def _single_line(value: str) -> str:
    return value.replace("\r", " ").replace("\n", " ")


_KEEPALIVE = comment("keepalive")


def last_event_id(request: Request) -> int | None:
    """Where the client resumes: its Last-Event-ID header, else ?last_event_id=; 400 unless an int64 >= 0."""
    header = request.headers.get("last-event-id")
    raw = header if header is not None else request.query_params.get("last_event_id")
    if raw is None:
        return None
    raw = raw.strip()
    if not _DIGITS.fullmatch(raw) or int(raw) > _INT64_MAX:
        field = "Last-Event-ID" if header is not None else "last_event_id"
        raise invalid_field(field, f"{field} must be an integer >= 0", value=raw)
    return int(raw)


def transport_of(send: Send) -> asyncio.WriteTransport | None:
    """The connection's transport when the server shows it: uvicorn's ASGI `send` is a method
    of its request cycle, which holds it. ASGI has no message that closes a connection whose
    writes are blocked, so dropping a client that stopped reading needs it; None elsewhere."""
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    # uvloop's transports have asyncio's methods but do not subclass its classes
    return cast(asyncio.WriteTransport, transport) if callable(getattr(transport, "abort", None)) else None


class EventStream:
    """The ASGI app of an SSE route (GET and HEAD): `subscribe` is the route's own part.
    Reads the metrics and the rate limiter from the app (`app.state.metrics`,
    `app.state.rate_limiter`); `route` is the metrics' label (the path template)."""

    def __init__(self, route: str, subscribe: Subscribe) -> None:
        self.route = route
        self.subscribe = subscribe

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        metrics: Metrics = scope["app"].state.metrics
        reply = Reply(scope, send, metrics, route=self.route)
        metrics.sse_subscribers.inc()
        bound = logs.request_id.set(reply.request_id)  # as logs.log_context does, without its generator
        try:
            opened = await _open(scope, receive, reply, self.subscribe)
            if opened is not None:
                await _stream(send, receive, *opened)
        finally:
            logs.request_id.reset(bound)
            metrics.sse_subscribers.dec()
            reply.access_line()


async def _open(scope: Scope, receive: Receive, reply: Reply,
                subscribe: Subscribe) -> tuple[Subscription, bytes] | None:
    """Answers the request up to the stream: the rate limit, the route's checks, the response's
    start; then the subscription to stream and the bytes to write first (None when all is sent)."""
    limiter: RateLimiter | None = getattr(scope["app"].state, "rate_limiter", None)
    refused = refusal(limiter, scope, time.monotonic()) if limiter is not None else None
    if refused is not None:
        for message in refused:
            await reply.send_first(message)
        return None
    try:
        subscription, first = await subscribe(Request(scope, receive))
    except ComfyfleetError as err:
        await error_response(err)(scope, receive, reply.send_first)
        return None
    except Exception:
        log.exception("unexpected error in %s %s", scope["method"], scope["path"])
        await JSONResponse(error_body(500, "internal error", "INTERNAL"), status_code=500)(
            scope, receive, reply.send_first)
        return None
    await reply.send_first({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    body = retry() + (first or b"")
    if subscription is None or scope["method"] == "HEAD":
        if subscription is not None:
            subscription.cancel()
        await reply.send({"type": "http.response.body", "body": body, "more_body": False})
        return None
    return subscription, body


async def _stream(send: Send, receive: Receive, subscription: Subscription, body: bytes) -> None:
    """Writes `body`, then the subscription's frames (keep-alives when idle) until it ends:
    when its feed ends, or when this subscriber fell too far behind or stopped reading (the
    client reconnects with Last-Event-ID)."""
    loop = asyncio.get_running_loop()
    # A write blocked past the stall limit: close the connection (which ends that write), or, on
    # a server that does not show its transport, cancel this task.
    transport = transport_of(send)
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
