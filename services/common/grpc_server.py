"""Lifecycle of a grpc.aio server: health and reflection services, domain-error mapping, graceful stop.

On SIGTERM/SIGINT: health goes NOT_SERVING, the server stops accepting, in-flight calls get
`grace` seconds to finish, then the process exits.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common.errors import ComfyfleetError, abort
from services.common.grpc_telemetry import server_interceptors
from services.common.service_auth import ServiceAuth
from services.common.tls import TlsFiles, bind

log = logging.getLogger(__name__)


def maps_domain_errors(method: Callable[..., Any]) -> Callable[..., Any]:
    """Decorates a servicer method: a ComfyfleetError becomes its rich gRPC status.

    Works for unary methods (coroutines) and server-streaming ones (async generators).
    """
    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def stream(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            try:
                async for item in method(self, request, context):
                    yield item
            except ComfyfleetError as err:
                await abort(context, err)

        return stream

    @functools.wraps(method)
    async def unary(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await method(self, request, context)
        except ComfyfleetError as err:
            await abort(context, err)

    return unary


MAX_MESSAGE_BYTES = 8 * 1024 * 1024

SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
]

# The initial metadata a watch stream (WatchWorkflow) sends once the caller and the workflow
# are checked, before its first message (workflow_service.proto).
WATCH_READY_KEY = "x-comfyfleet-watch"
WATCH_READY = ((WATCH_READY_KEY, "ready"),)

CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # A restarted peer is used again within about a second: gRPC's default backoff grows to
    # 120 s, and calls fail fast (503) until the next attempt (tests/faults).
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 1_000),
]


async def serve(
    address: str,
    register: Callable[[grpc.aio.Server], None],
    *,
    service_names: list[str],
    on_stop: Callable[[], Awaitable[None]] | None = None,
    before_stop: Callable[[], Awaitable[None]] | None = None,
    grace: float = 5.0,
    auth: ServiceAuth | None = None,
    tls: TlsFiles | None = None,
) -> None:
    """Binds `address`, registers services and health, serves until SIGTERM/SIGINT.

    `before_stop` runs once health is NOT_SERVING and before the drain; `on_stop` after it.
    `auth` refuses calls without the credential its rules ask for (service_auth.py); `tls`
    makes the port TLS with client certificates required (tls.py).
    """
    # telemetry outermost: a refused call is counted and logged like any other
    interceptors = [*server_interceptors(), *([auth] if auth is not None else [])]
    server = grpc.aio.server(options=SERVER_OPTIONS, interceptors=interceptors)
    register(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection([*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    bind(server, address, tls)
    await server.start()
    for name in ["", *service_names]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("serving on %s", address)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping")
    for name in ["", *service_names]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    if before_stop is not None:
        await before_stop()  # e.g. end long-lived streams so they do not hold up the drain
    await server.stop(grace)
    if on_stop is not None:
        await on_stop()
