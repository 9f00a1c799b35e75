"""Prometheus metrics of the gRPC services: a small HTTP listener serving GET /metrics.

Each of scheduler, storage and runner serves its process's default registry on its own port
(SCHEDULER_METRICS_PORT, STORAGE_METRICS_PORT, RUNNER_METRICS_PORT; 0 = off), on the host of
its gRPC listen address. The gateway serves /metrics on its HTTP port (gateway/metrics.py).

The listener runs on the service's event loop (aiohttp): before each exposition it awaits
`refresh`, which lets a service read values that live behind async calls (the scheduler's
indexed counts) without blocking the loop or touching it from another thread. A port that
cannot be bound is logged and the service runs on without metrics: metrics never stop work.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)

REFRESH_TIMEOUT_SECONDS = 5.0

Refresh = Callable[[], Awaitable[None]]


def metrics_host(listen: str) -> str:
    """The host part of a gRPC listen address ("0.0.0.0:50051" -> "0.0.0.0"; "[::]:1" -> "::")."""
    host = listen.rpartition(":")[0].strip("[]")
    return host or "0.0.0.0"


class MetricsListener:
    """GET /metrics over HTTP on `host:port`, owned by the service that starts it."""

    def __init__(self, host: str, port: int, *, registry: CollectorRegistry = REGISTRY,
                 refresh: Refresh | None = None) -> None:
        self.host = host
        self.port = port
        self._registry = registry
        self._refresh = refresh
        self._runner: web.AppRunner | None = None

    async def start(self) -> MetricsListener:
        """Binds and serves; on a bind error logs a warning and serves nothing."""
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
        try:
            await site.start()
        except OSError as err:
            log.warning("metrics: cannot listen on %s:%d (%s); serving without /metrics", self.host, self.port, err)
            await runner.cleanup()
            return self
        self._runner = runner
        log.info("metrics on http://%s:%d/metrics", self.host, self.port)
        return self

    async def _metrics(self, _request: web.Request) -> web.Response:
        if self._refresh is not None:
            try:
                await asyncio.wait_for(self._refresh(), REFRESH_TIMEOUT_SECONDS)
            except Exception as err:  # serve what is there; the stale values say when they were read
                log.warning("metrics: refresh failed: %s", err)
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


async def start_metrics(listen: str, port: int, *, refresh: Refresh | None = None) -> MetricsListener | None:
    """A started listener on the listen address's host, or None when `port` is 0 (off)."""
    if port == 0:
        return None
    return await MetricsListener(metrics_host(listen), port, refresh=refresh).start()
