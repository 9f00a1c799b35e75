"""Prometheus metrics of the gateway, served at GET /metrics (text exposition format).

    comfyfleet_http_requests_total{method, route, status}
    comfyfleet_http_request_seconds{method, route}   time until the response headers
    comfyfleet_sse_subscribers                       SSE streams open now (.../subscribe, /v1/events)
    comfyfleet_sse_watches                           WatchWorkflow streams held open to the scheduler

`route` is the route's path template (`/v1/workflow/{id}`), never the raw path, so ids do
not explode the label space; unmatched paths count as `other`. Each app has its own
registry (tests build many apps in one process).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

SUBSCRIBE_ROUTE = "/v1/workflow/{id}/subscribe"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("comfyfleet_http_requests", "HTTP requests answered by the gateway",
                                ["method", "route", "status"], registry=self.registry)
        self.seconds = Histogram("comfyfleet_http_request_seconds", "Time until the response headers were sent",
                                 ["method", "route"], registry=self.registry)
        self.sse_subscribers = Gauge("comfyfleet_sse_subscribers", "SSE streams open now",
                                     registry=self.registry)
        self.sse_watches = Gauge("comfyfleet_sse_watches", "WatchWorkflow streams held open to the scheduler",
                                 registry=self.registry)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def route_template(routes: Sequence[BaseRoute], scope: Scope) -> str:
    for route in routes:
        match, _ = route.matches(scope)
        if match == Match.FULL:
            return str(getattr(route, "path", "other"))
    return "other"


class MetricsMiddleware:
    def __init__(self, app: ASGIApp, *, metrics: Metrics, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, route = scope.get("method", ""), route_template(self.routes, scope)
        started = time.perf_counter()

        async def timed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.metrics.seconds.labels(method, route).observe(time.perf_counter() - started)
                self.metrics.requests.labels(method, route, str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, timed_send)


async def metrics_route(request: Request) -> Response:
    """GET /metrics."""
    metrics: Metrics = request.app.state.metrics
    gateway = getattr(request.app.state, "gateway", None)
    if (feeds := getattr(gateway, "feeds", None)) is not None:
        metrics.sse_watches.set(feeds.watch_count())
    return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
