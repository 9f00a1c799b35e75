"""Wiring: the Starlette app, its routes, its error handling, and the gRPC channels' lifetime."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.routing import Route

from services.common.errors import ComfyfleetError
from services.common.grpc_server import CHANNEL_OPTIONS
from services.gateway import health_routes, object_routes, user_routes, workflow_routes
from services.gateway.config import GatewaySettings
from services.gateway.context import Gateway
from services.gateway.errors import ErrorBodyMiddleware, handle_domain_error, handle_http_exception
from services.gateway.scheduler_client import GrpcScheduler
from services.gateway.storage_client import GrpcStorage

CHANNEL_CLOSE_GRACE_SECONDS = 1.0

ROUTES = [
    Route("/healthz", health_routes.healthz, methods=["GET"]),
    Route("/readyz", health_routes.readyz, methods=["GET"]),
    Route("/v1/user", user_routes.get_user, methods=["GET"]),
    Route("/v1/workflow", workflow_routes.create_workflow, methods=["POST"]),
    Route("/v1/workflow", workflow_routes.list_workflows, methods=["GET"]),
    Route("/v1/workflow/{id}", workflow_routes.get_workflow, methods=["GET"]),
    Route("/v1/workflow/{id}/cancel", workflow_routes.cancel_workflow, methods=["POST"]),
    Route("/v1/workflow/{id}/subscribe", workflow_routes.subscribe, methods=["GET"]),
    Route("/v1/workflow/{id}/outputs", workflow_routes.list_outputs, methods=["GET"]),
    Route("/v1/objects/{key:path}", object_routes.download_object, methods=["GET"]),
]


def create_app(settings: GatewaySettings) -> Starlette:
    """The gateway app; its lifespan opens the scheduler and storage channels and closes them."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        scheduler = grpc.aio.insecure_channel(settings.scheduler_address, options=CHANNEL_OPTIONS)
        storage = grpc.aio.insecure_channel(settings.storage_address, options=CHANNEL_OPTIONS)
        app.state.gateway = Gateway(
            settings=settings,
            scheduler=GrpcScheduler(scheduler),
            storage=GrpcStorage(storage),
            channels={"scheduler": scheduler, "storage": storage},
        )
        try:
            yield
        finally:
            await scheduler.close(CHANNEL_CLOSE_GRACE_SECONDS)
            await storage.close(CHANNEL_CLOSE_GRACE_SECONDS)

    return Starlette(
        routes=ROUTES,
        lifespan=lifespan,
        middleware=[Middleware(ErrorBodyMiddleware)],
        exception_handlers={ComfyfleetError: handle_domain_error, HTTPException: handle_http_exception},
    )
