"""Probes: /healthz (the process answers) and /readyz (scheduler and storage answer gRPC health)."""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from services.gateway.context import gateway
from services.gateway.errors import RETRY_AFTER_SECONDS, error_body

READY_TIMEOUT_SECONDS = 2.0


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """200 when every dependency reports SERVING, else 503 naming those that do not."""
    channels = gateway(request).channels
    names = list(channels)
    serving = await asyncio.gather(*(is_serving(channels[name]) for name in names))
    down = [name for name, ok in zip(names, serving, strict=True) if not ok]
    if not down:
        return JSONResponse({"status": "ok"})
    return JSONResponse(
        error_body(503, f"not ready: {', '.join(down)} unavailable", "NOT_READY",
                   [{"dependency": name} for name in down]),
        status_code=503,
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


async def is_serving(channel: grpc.aio.Channel) -> bool:
    """Whether the server behind `channel` answers the standard health check with SERVING."""
    stub = health_pb2_grpc.HealthStub(channel)
    try:
        response = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=READY_TIMEOUT_SECONDS)
    except grpc.aio.AioRpcError:
        return False
    return bool(response.status == health_pb2.HealthCheckResponse.SERVING)
