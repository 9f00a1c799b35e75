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

from collections.abc import Sequence
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match
from starlette.types import Scope

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
        self._answered: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def answered(self, method: str, route: str, status: int, seconds: float) -> None:
        """One response started: its time and its count. The labelled children are kept (a
        `labels()` lookup costs ~4 us; methods, route templates and statuses are few)."""
        key = (method, route, status)
        children = self._answered.get(key)
        if children is None:
            children = self._answered[key] = (self.seconds.labels(method, route),
                                              self.requests.labels(method, route, str(status)))
        children[0].observe(seconds)
        children[1].inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def route_template(routes: Sequence[BaseRoute], scope: Scope) -> str:
    for route in routes:
        match, _ = route.matches(scope)
        if match == Match.FULL:
            return str(getattr(route, "path", "other"))
    return "other"


async def metrics_route(request: Request) -> Response:
    """GET /metrics."""
    metrics: Metrics = request.app.state.metrics
    gateway = getattr(request.app.state, "gateway", None)
    if (feeds := getattr(gateway, "feeds", None)) is not None:
        metrics.sse_watches.set(feeds.watch_count())
    return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
