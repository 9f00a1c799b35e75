"""What every HTTP request passes once, before its route, in one layer (`EdgeMiddleware`):

- a request id: the client's `X-Request-ID` when it sent a usable one (at most 128 URL-safe
  characters), else a new one. It is bound in the logging context (services/common/logs.py)
  for everything the request does, sent back as the response's `X-Request-ID`, and put into
  the gRPC metadata of the calls the request makes (`x-request-id`, scheduler_client.py), so
  the scheduler's log lines about the same request carry the same id;
- the metrics of metrics.py: the time until the response's start and the count by status,
  labelled with the matched route's path template (`other` when no route matched);
- the rate limit of rate_limit.py on the /v1 API: a refused request is answered 429 here;
- an unexpected exception becomes a logged 500 with the public error body (errors.py). After
  a response has started (a stream), it is logged and the response is left to end: the
  client sees a truncated body, never a second status line;
- when the response is done, one access line: method, path, status, duration.

One layer with one wrapper of `send` (`Reply`), rather than a middleware for each: each
middleware is a coroutine frame per request and a wrapper per message sent, and the four took
~80 us of CPU per request on the 2-core bench machine (/tmp measurement: the gateway's routes
answering at once, with and without them), against ~700 us a create costs the gateway in all.
The SSE routes, answered before Starlette's middleware (app.py), use `Reply` the same way
(sse.EventStream).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence

from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common import logs
from services.common.grpc_telemetry import usable_request_id
from services.gateway.errors import error_body
from services.gateway.metrics import Metrics, route_template
from services.gateway.rate_limit import RateLimiter, rate_limited, refusal

log = logging.getLogger("services.gateway.errors")  # where every error the gateway answers is logged
access = logging.getLogger("services.gateway.access")

HEADER = b"x-request-id"


def request_id_of(scope: Scope) -> str:
    """The request's id: the client's X-Request-ID when usable, else a new one."""
    for name, value in scope["headers"]:
        if name == HEADER:
            return usable_request_id(value.decode("latin-1"))
    return usable_request_id(None)


class Reply:
    """A request's `send`: its response's start gets the request id and is counted in the
    metrics (`send_first`); after it, `send` is the server's own.

    `route` is the metrics' label; None: the route the router matched, when the response
    starts (`scope["route"]`, set by Starlette's router), else the first route of `routes`
    that matches fully, else `other`."""

    __slots__ = ("method", "metrics", "request_id", "route", "routes", "scope", "send", "sent_start", "started",
                 "status")

    def __init__(self, scope: Scope, send: Send, metrics: Metrics, *, route: str | None = None,
                 routes: Sequence[BaseRoute] = ()) -> None:
        self.started = time.perf_counter()
        self.scope = scope
        self.send = send
        self.metrics = metrics
        self.method: str = scope["method"]
        self.route = route
        self.routes = routes
        self.request_id = request_id_of(scope)
        self.status = 500  # unless a response starts
        self.sent_start = False

    async def send_first(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = int(message["status"])
            self.sent_start = True
            message = {**message, "headers": [*message.get("headers", ()),
                                              (HEADER, self.request_id.encode("latin-1"))]}
            route = self.route if self.route is not None else self._matched_route()
            self.metrics.answered(self.method, route, self.status, time.perf_counter() - self.started)
        await self.send(message)

    def _matched_route(self) -> str:
        matched = self.scope.get("route")
        if matched is not None:
            return str(getattr(matched, "path", "other"))
        return route_template(self.routes, self.scope)

    def access_line(self) -> None:
        access.info('%s %s %d %.1f ms', self.method, self.scope["path"], self.status,
                    (time.perf_counter() - self.started) * 1000, extra={"request_id": self.request_id})


class EdgeMiddleware:
    """The request id, metrics, rate limit, last-resort 500 and access line of every HTTP
    request (this module's docstring). `limiter` None: no rate limit."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics, routes: Sequence[BaseRoute],
                 limiter: RateLimiter | None) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        reply = Reply(scope, send, self.metrics, routes=self.routes)
        bound = logs.request_id.set(reply.request_id)  # as logs.log_context does, without its generator
        try:
            if self.limiter is not None and rate_limited(scope["path"]):
                refused = refusal(self.limiter, scope, time.monotonic())
                if refused is not None:
                    for message in refused:
                        await reply.send_first(message)
                    return
            await self._answer(scope, receive, reply)
        finally:
            logs.request_id.reset(bound)
            reply.access_line()

    async def _answer(self, scope: Scope, receive: Receive, reply: Reply) -> None:
        try:
            await self.app(scope, receive, reply.send_first)
        except Exception:
            log.exception("unexpected error in %s %s", scope.get("method"), scope.get("path"))
            if reply.sent_start:
                return
            body = json.dumps(error_body(500, "internal error", "INTERNAL")).encode()
            await reply.send_first({
                "type": "http.response.start",
                "status": 500,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            })
            await reply.send_first({"type": "http.response.body", "body": body})
