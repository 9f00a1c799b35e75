"""RunnerPoolService: what a runner pool drives (every runner registered through the API).

A pool agent (`python -m services.runner --pool`) authenticates with a pool token, a token
kind only an administrator holds: it reads every registered runner's ComfyUI headers in
clear, so no user's own token may. `WatchPool` sends the whole set of registered runners,
then the whole set again whenever the runner API changes one (`PoolChanges.changed`), and
every `resync_seconds` regardless (a change made by another process, such as the admin CLI).
The pool opens one session per runner, saying `Hello.runner_id` with the same token
(`pool_user` checks both).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

from comfyfleet.runner.v1 import pool_runner_pb2, runner_pool_service_pb2, runner_pool_service_pb2_grpc

from services.common.errors import PermissionDenied, Unauthenticated
from services.common.grpc_server import maps_domain_errors
from services.scheduler.db.identity_store import POOL, IdentityStore
from services.scheduler.db.models import RunnerRow, UserRow
from services.scheduler.db.runner_store import RunnerStore
from services.scheduler.workflow_servicer import Context


async def pool_user(identity: IdentityStore, token: str) -> UserRow:
    """The administrator behind a pool token; Unauthenticated or PermissionDenied otherwise."""
    user = await identity.authenticate(token, POOL)
    if not user.is_admin:
        raise PermissionDenied("a pool token must belong to an administrator", reason="POOL_NOT_ADMIN")
    return user


class PoolChanges:
    """Wakes every `WatchPool` stream when a registered runner changes (in this process)."""

    def __init__(self) -> None:
        self.event = asyncio.Event()

    def changed(self) -> None:
        """Sets the current event (every waiter wakes) and starts a new one."""
        self.event.set()
        self.event = asyncio.Event()


def pool_runner_pb(row: RunnerRow) -> pool_runner_pb2.PoolRunner:
    return pool_runner_pb2.PoolRunner(
        id=row.id, name=row.name, endpoint=row.endpoint, headers=json.loads(row.headers_json),
        tags=json.loads(row.tags_json), enabled=row.status == "active",
    )


class RunnerPoolServicer(runner_pool_service_pb2_grpc.RunnerPoolServiceServicer):
    def __init__(
        self, identity: IdentityStore, store: RunnerStore, changes: PoolChanges, *, resync_seconds: float = 30.0
    ) -> None:
        self.identity = identity
        self.store = store
        self.changes = changes
        self.resync_seconds = resync_seconds
        self._closed = False

    def close(self) -> None:
        """Ends every WatchPool stream (the scheduler is stopping; pools reconnect to another)."""
        self._closed = True
        self.changes.changed()

    @maps_domain_errors
    async def WatchPool(
        self, request: runner_pool_service_pb2.WatchPoolRequest, context: Context
    ) -> AsyncIterator[runner_pool_service_pb2.WatchPoolResponse]:
        await pool_user(self.identity, _bearer(context))
        last: runner_pool_service_pb2.WatchPoolResponse | None = None
        while not self._closed:
            changed = self.changes.event  # taken before the read: a change during it is not missed
            current = runner_pool_service_pb2.WatchPoolResponse(
                runners=[pool_runner_pb(row) for row in await self.store.registered()])
            if current != last:
                yield current
                last = current
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), self.resync_seconds)


def _bearer(context: Context) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            scheme, _, token = str(value).partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthenticated("authorization must be 'Bearer <token>'", reason="TOKEN_MALFORMED")
            return token.strip()
    raise Unauthenticated("missing bearer token", reason="TOKEN_MISSING")
