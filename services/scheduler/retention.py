"""Output retention: a background sweep that deletes outputs older than the retention period.

Every `interval` it takes the oldest expired OutputRow records (created before now minus
SCHEDULER_OUTPUT_RETENTION_DAYS), deletes their objects through storage, and only then their
records, in batches. If storage is down the records stay and the next sweep tries again, so
no record ever points at an object that is gone while the object is still kept, and no object
outlives its record's deletion. Retention 0 means forever: no sweep runs.

`OutputRetention.start` returns the running sweeper; `close()` cancels it and waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Protocol

import grpc
from comfyfleet.storage.v1 import storage_service_pb2, storage_service_pb2_grpc
from sqlmodel import col, delete, select

from services.common.errors import ComfyfleetError, from_rpc_error
from services.common.grpc_server import CHANNEL_OPTIONS
from services.common.service_auth import PLAIN, ServiceSecurity
from services.scheduler.db.engine import Database
from services.scheduler.db.models import OutputRow

log = logging.getLogger(__name__)

BATCH = 500  # keys per DeleteObjects call (storage takes up to 1000)


class KeyDeleter(Protocol):
    async def delete_keys(self, keys: Sequence[str]) -> int: ...


class GrpcKeyDeleter:
    """DeleteObjects by key over its own channel to storage."""

    def __init__(self, address: str, security: ServiceSecurity = PLAIN) -> None:
        self._channel = security.channel(address, CHANNEL_OPTIONS)  # with the service token
        self._stub = storage_service_pb2_grpc.StorageServiceStub(self._channel)

    async def delete_keys(self, keys: Sequence[str]) -> int:
        try:
            request = storage_service_pb2.DeleteObjectsRequest(keys=list(keys))
            reply = await self._stub.DeleteObjects(request, timeout=60)
        except grpc.aio.AioRpcError as err:
            raise from_rpc_error(err) from None
        return int(reply.deleted_count)

    async def close(self) -> None:
        await self._channel.close()


class OutputRetention:
    """Deletes expired outputs (objects, then records) every `interval_seconds`."""

    def __init__(
        self,
        db: Database,
        storage: KeyDeleter,
        *,
        retention: timedelta,
        interval_seconds: float,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._db = db
        self._storage = storage
        self._retention = retention
        self._interval = interval_seconds
        self._clock = clock
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def start(cls, db: Database, storage_address: str, *, retention_days: float,
              interval_seconds: float, security: ServiceSecurity = PLAIN) -> OutputRetention:
        """The sweeper, running unless retention_days is 0 (keep forever)."""
        retention = cls(db, GrpcKeyDeleter(storage_address, security), retention=timedelta(days=retention_days),
                        interval_seconds=interval_seconds)
        if retention_days > 0:
            retention._task = asyncio.create_task(retention._run(), name="output-retention")
        return retention

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if isinstance(self._storage, GrpcKeyDeleter):
            await self._storage.close()

    async def sweep(self) -> int:
        """One sweep: deletes every output expired now; returns how many records went."""
        if not self._retention:  # 0 = keep forever
            return 0
        cutoff = self._clock() - self._retention
        removed = 0
        while True:
            async with self._db.sessions() as s:
                rows = (await s.exec(
                    select(OutputRow).where(col(OutputRow.created_at) < cutoff)
                    .order_by(col(OutputRow.created_at)).limit(BATCH)
                )).all()
            if not rows:
                return removed
            await self._storage.delete_keys(sorted({row.object_key for row in rows}))
            ids = [row.id for row in rows]
            async with self._db.write_lock, self._db.sessions() as s, s.begin():
                await s.exec(delete(OutputRow).where(col(OutputRow.id).in_(ids)))  # type: ignore[call-overload]
            removed += len(ids)
            log.info("retention: deleted %d outputs created before %s", len(ids), cutoff.isoformat())

    async def _run(self) -> None:
        while True:
            try:
                await self.sweep()
            except ComfyfleetError as err:  # storage down: the records stay, the next sweep retries
                log.warning("retention sweep postponed: %s", err.message)
            except Exception:
                log.exception("retention sweep failed")
            await asyncio.sleep(self._interval)
