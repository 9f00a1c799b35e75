"""Active and standby: several scheduler processes on one Postgres, exactly one of them serving.

Every process binds its port at once and answers gRPC health with NOT_SERVING; every other
call is refused with UNAVAILABLE. Meanwhile it tries to become the active one:

    Postgres   a session-level advisory lock (`pg_try_advisory_lock`, polled every second)
               on a dedicated connection. Postgres releases it when that session ends, which
               is at once when the holder's process dies (the kernel closes its socket) and,
               for a peer that vanished from the network, after the TCP keepalives this
               connection asks the server for (about 11 s).
    SQLite     one process owns the file: always active at once.

The winner starts `SchedulerApp` (migrations, placement, sessions: the same start as a plain
restart, so runners get one lease to come back and claim their work), opens the gate and
reports SERVING. Clients find it by health (services/common/failover.py; on Kubernetes the
Service's readiness probe). If the lock's connection breaks, the process can no longer know
it is the only active one: it stops serving and exits with status 1, to come back as a standby.

Shutdown on SIGTERM/SIGINT is as in services/common/grpc_server.serve.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine
from sqlalchemy.pool import NullPool

from services.common.grpc_server import SERVER_OPTIONS
from services.common.grpc_telemetry import server_interceptors
from services.common.service_auth import ServiceAuth
from services.common.tls import TlsFiles, bind

log = logging.getLogger(__name__)

# pg_advisory_lock key of the active scheduler ("cfactive" as a big-endian int64).
LOCK_KEY = int.from_bytes(b"cfactive", "big") - 2**63
POLL_SECONDS = 1.0  # a standby asks for the lock this often
CHECK_SECONDS = 2.0  # the active one checks the lock's connection this often
# Asked of the Postgres server for the lock's connection: a holder that vanished without
# closing its socket loses the lock after idle + interval * count seconds.
KEEPALIVES = {"tcp_keepalives_idle": "5", "tcp_keepalives_interval": "2", "tcp_keepalives_count": "3"}


class Leadership(Protocol):
    """Who is the active scheduler."""

    async def acquire(self) -> None:
        """Returns once this process is the active one."""

    async def lost(self) -> None:
        """Returns if this process stops being the active one."""

    async def close(self) -> None: ...


class SoleScheduler:
    """SQLite: one process owns the database file; it is active at once and stays so."""

    async def acquire(self) -> None:
        return None

    async def lost(self) -> None:
        await asyncio.Event().wait()

    async def close(self) -> None:
        return None


class AdvisoryLock:
    """Postgres: the holder of a session-level advisory lock is the active scheduler."""

    def __init__(self, url: str, *, key: int = LOCK_KEY, poll_seconds: float = POLL_SECONDS,
                 check_seconds: float = CHECK_SECONDS) -> None:
        self._engine = create_async_engine(url, poolclass=NullPool, connect_args={"server_settings": KEEPALIVES})
        self._key = key
        self._poll = poll_seconds
        self._check = check_seconds
        self._conn: AsyncConnection | None = None

    async def acquire(self) -> None:
        waiting_logged = False
        while True:
            try:
                if self._conn is None:
                    conn = await self._engine.connect()
                    self._conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
                got = (await self._conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": self._key})).scalar()
                if got:
                    return
                if not waiting_logged:
                    log.info("standby: another scheduler is active; waiting for its lock")
                    waiting_logged = True
            except Exception as err:  # Postgres unreachable or restarting: keep trying
                log.warning("standby: cannot ask Postgres for the lock: %s", err)
                await self._drop()
            await asyncio.sleep(self._poll)

    async def lost(self) -> None:
        assert self._conn is not None, "lost() before acquire()"
        while True:
            await asyncio.sleep(self._check)
            try:
                await asyncio.wait_for(self._conn.execute(text("SELECT 1")), self._check * 2)
            except Exception as err:
                log.error("the connection holding the active scheduler's lock broke: %s", err)
                await self._drop()
                return

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.invalidate()
                await conn.close()

    async def close(self) -> None:
        if self._conn is not None:  # closing the session releases the lock
            with contextlib.suppress(Exception):
                await self._conn.close()
            self._conn = None
        await self._engine.dispose()


def leadership_for(database_url: str) -> Leadership:
    return AdvisoryLock(database_url) if database_url.startswith("postgresql") else SoleScheduler()


class ActiveApp(Protocol):
    """What the active process serves (services.scheduler.server.SchedulerApp)."""

    def register(self, server: Any) -> None: ...
    async def drain(self) -> None:
        """Ends long-lived streams, so they do not hold up the server's stop."""
    async def stop(self) -> None: ...


async def _refuse(_requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
    await context.abort(grpc.StatusCode.UNAVAILABLE, "this scheduler is the standby; the active one serves")


_REFUSE = grpc.stream_stream_rpc_method_handler(_refuse)  # any cardinality: it reads nothing
_ALWAYS_OPEN = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class _Gate(grpc.GenericRpcHandler):
    """The server's only handler of the scheduler's services: refuses every call until
    `open`, then hands each to the handlers the app registered (collected, since a started
    grpc.aio server takes no new services)."""

    def __init__(self) -> None:
        self._open = False
        self._methods: dict[str, grpc.RpcMethodHandler] = {}
        self._generic: list[grpc.GenericRpcHandler] = []

    # the two calls the generated add_*Servicer_to_server make on a server
    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self._generic.extend(handlers)

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self._methods.update({f"/{service}/{name}": h for name, h in handlers.items()})

    def open(self, app: ActiveApp) -> None:
        app.register(self)
        self._open = True

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method: str = details.method  # type: ignore[attr-defined]
        if method.startswith(_ALWAYS_OPEN):
            return None  # health and reflection are registered on the server itself
        if not self._open:
            return _REFUSE
        if (found := self._methods.get(method)) is not None:
            return found
        return next((h for g in self._generic if (h := g.service(details)) is not None), None)


async def serve_when_active(
    address: str,
    leadership: Leadership,
    start: Callable[[], Awaitable[ActiveApp]],
    *,
    service_names: list[str],
    grace: float = 5.0,
    auth: ServiceAuth | None = None,
    tls: TlsFiles | None = None,
) -> int:
    """Listens on `address` as a standby, serves once `leadership` is acquired, until a
    signal (returns 0) or the leadership is lost (returns 1). `auth` and `tls` as in
    grpc_server.serve."""
    gate = _Gate()
    interceptors = [*server_interceptors(), *([auth] if auth is not None else [])]
    server = grpc.aio.server(options=SERVER_OPTIONS, interceptors=interceptors)
    server.add_generic_rpc_handlers((gate,))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection([*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    bind(server, address, tls)
    await _set_health(health_servicer, service_names, health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.start()
    log.info("listening on %s; NOT_SERVING until this scheduler is the active one", address)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    stopping = asyncio.create_task(stop.wait(), name="signal")
    app: ActiveApp | None = None
    status = 0
    try:
        acquired = asyncio.create_task(leadership.acquire(), name="acquire")
        await asyncio.wait({acquired, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not stop.is_set():
            log.info("this scheduler is now the active one")
            app = await start()
            gate.open(app)
            await _set_health(health_servicer, service_names, health_pb2.HealthCheckResponse.SERVING)
            log.info("serving on %s", address)
            lost = asyncio.create_task(leadership.lost(), name="lost")
            await asyncio.wait({lost, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if lost.done() and not stop.is_set():
                log.error("no longer the active scheduler: stopping")
                status = 1
            lost.cancel()
        acquired.cancel()
    finally:
        stopping.cancel()
        log.info("stopping")
        await _set_health(health_servicer, service_names, health_pb2.HealthCheckResponse.NOT_SERVING)
        if app is not None:
            await app.drain()
        await server.stop(grace)
        if app is not None:
            await app.stop()
        await leadership.close()
    return status


async def _set_health(servicer: health.aio.HealthServicer, names: list[str], status: Any) -> None:
    for name in ["", *names]:
        await servicer.set(name, status)
