"""Wiring: the Starlette app, its routes, its error handling, and the gRPC channels' lifetime."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.routing import Match, Route
from starlette.types import Receive, Scope, Send

from services.common.errors import ComfyfleetError
from services.common.failover import failover_channel
from services.common.grpc_server import CHANNEL_OPTIONS
from services.gateway import (
    events_routes,
    health_routes,
    object_routes,
    runner_routes,
    subscribe_routes,
    template_routes,
    user_routes,
    webhook_routes,
    workflow_routes,
)
from services.gateway.config import GatewaySettings
from services.gateway.context import Gateway
from services.gateway.dashboard import DashboardRoute
from services.gateway.edge import EdgeMiddleware
from services.gateway.errors import handle_domain_error, handle_http_exception
from services.gateway.feeds import Feeds
from services.gateway.metrics import Metrics, metrics_route
from services.gateway.openapi import openapi_route
from services.gateway.rate_limit import RateLimiter
from services.gateway.scheduler_client import GrpcScheduler
from services.gateway.storage_client import GrpcStorage

CHANNEL_CLOSE_GRACE_SECONDS = 1.0

SUBSCRIBE = Route("/v1/workflow/{id}/subscribe", subscribe_routes.subscribe, methods=["GET"])
EVENTS = Route("/v1/events", events_routes.events, methods=["GET"])
# Starlette's router tries the routes in this order (~2.6 us each on the bench machine), so
# the busiest come first: creates, polls of one workflow, downloads. No two routes match the
# same method and path, so the order changes nothing else; the dashboard's catch-all stays last.
ROUTES = [
    Route("/v1/workflow", workflow_routes.create_workflow, methods=["POST"]),
    Route("/v1/workflow/{id}", workflow_routes.get_workflow, methods=["GET"]),
    Route("/v1/objects/{key:path}", object_routes.download_object, methods=["GET"]),
    Route("/v1/workflow", workflow_routes.list_workflows, methods=["GET"]),
    Route("/healthz", health_routes.healthz, methods=["GET"]),
    Route("/readyz", health_routes.readyz, methods=["GET"]),
    Route("/metrics", metrics_route, methods=["GET"]),
    Route("/openapi.json", openapi_route, methods=["GET"]),
    Route("/v1/user", user_routes.get_user, methods=["GET"]),
    Route("/v1/workflow/{id}", workflow_routes.delete_workflow, methods=["DELETE"]),
    Route("/v1/workflow/{id}/rerun", workflow_routes.rerun_workflow, methods=["POST"]),
    Route("/v1/workflow/{id}/cancel", workflow_routes.cancel_workflow, methods=["POST"]),
    SUBSCRIBE,
    Route("/v1/workflow/{id}/outputs", workflow_routes.list_outputs, methods=["GET"]),
    EVENTS,
    Route("/v1/runner", runner_routes.create_runner, methods=["POST"]),
    Route("/v1/runner", runner_routes.list_runners, methods=["GET"]),
    Route("/v1/runner/{id}", runner_routes.get_runner, methods=["GET"]),
    Route("/v1/runner/{id}", runner_routes.update_runner, methods=["PUT"]),
    Route("/v1/runner/{id}", runner_routes.delete_runner, methods=["DELETE"]),
    Route("/v1/runner/{id}/interrupt", runner_routes.interrupt_runner, methods=["POST"]),
    Route("/v1/runner-token", runner_routes.create_runner_token, methods=["POST"]),
    Route("/v1/template", template_routes.create_template, methods=["POST"]),
    Route("/v1/template", template_routes.list_templates, methods=["GET"]),
    Route("/v1/template/{id}", template_routes.get_template, methods=["GET"]),
    Route("/v1/template/{id}", template_routes.update_template, methods=["PUT"]),
    Route("/v1/template/{id}", template_routes.delete_template, methods=["DELETE"]),
    Route("/v1/template/{id}/run", template_routes.run_template, methods=["POST"]),
    Route("/v1/webhook", webhook_routes.create_webhook, methods=["POST"]),
    Route("/v1/webhook", webhook_routes.list_webhooks, methods=["GET"]),
    Route("/v1/webhook/{id}", webhook_routes.get_webhook, methods=["GET"]),
    Route("/v1/webhook/{id}", webhook_routes.update_webhook, methods=["PUT"]),
    Route("/v1/webhook/{id}", webhook_routes.delete_webhook, methods=["DELETE"]),
    Route("/v1/webhook/{id}/deliveries", webhook_routes.list_deliveries, methods=["GET"]),
    Route("/v1/webhook/{id}/deliveries/{delivery_id}/redeliver", webhook_routes.redeliver, methods=["POST"]),
    Route("/v1/webhook-secret", webhook_routes.workflow_secret, methods=["GET"]),
    Route("/v1/workflow/{id}/webhook-deliveries", webhook_routes.workflow_deliveries, methods=["GET"]),
    DashboardRoute(),  # GET / and the dashboard's static files (services/gateway/dashboard)
]


def create_app(settings: GatewaySettings) -> Starlette:
    """The gateway app; its lifespan opens the scheduler and storage channels and closes them."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # one address, or active + standby; each call carries the caller's own token
        scheduler = failover_channel(settings.scheduler_address, settings.security)
        storage = settings.security.channel(settings.storage_address, CHANNEL_OPTIONS)  # with the service token
        storage_client = GrpcStorage(storage)
        feeds = Feeds(partial(subscribe_routes.render_event, storage_client), capacity=settings.sse_buffer_frames,
                      keepalive_seconds=settings.sse_keepalive_seconds, stall_seconds=settings.sse_stall_seconds)
        app.state.gateway = Gateway(
            settings=settings,
            scheduler=GrpcScheduler(scheduler, create_batch=settings.create_batch),
            storage=storage_client,
            channels={"scheduler": scheduler, "storage": storage},
            feeds=feeds,
        )
        try:
            yield
        finally:
            await feeds.close()
            await scheduler.close(CHANNEL_CLOSE_GRACE_SECONDS)
            await storage.close(CHANNEL_CLOSE_GRACE_SECONDS)

    metrics = Metrics()
    limiter = RateLimiter(settings.rate_limit_requests, settings.rate_limit_window_seconds) \
        if settings.rate_limit_requests > 0 else None
    app = GatewayApp(
        routes=ROUTES,
        lifespan=lifespan,
        # request id, metrics, rate limit, last-resort 500 and access line, in one layer
        middleware=[Middleware(EdgeMiddleware, metrics=metrics, routes=ROUTES, limiter=limiter)],
        exception_handlers={ComfyfleetError: handle_domain_error, HTTPException: handle_http_exception},
    )
    app.state.metrics = metrics
    app.state.rate_limiter = limiter  # shared by the middleware and the bare routes
    return app


class GatewayApp(Starlette):
    """The Starlette app, except that the routes in BARE_ROUTES (SSE streams, thousands open at
    once) are answered before its middleware: such a route's app does itself what the
    middleware does (sse.EventStream), and an open stream holds no middleware frames and
    passes no middleware on each write. The routes stay in ROUTES for 405s, OpenAPI and the
    metrics' route names."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in _BARE_METHODS and scope["path"].endswith(_BARE_ENDINGS):
            for route in BARE_ROUTES:
                match, child = route.matches(scope)
                if match is Match.FULL:
                    scope["app"] = self
                    scope.update(child)
                    await route.app(scope, receive, send)
                    return
        await super().__call__(scope, receive, send)


BARE_ROUTES = [SUBSCRIBE, EVENTS]  # GET and HEAD
# What a request must have to be for one of BARE_ROUTES, checked before matching them in full
_BARE_METHODS = frozenset({"GET", "HEAD"})
_BARE_ENDINGS = ("/subscribe", "/v1/events")
