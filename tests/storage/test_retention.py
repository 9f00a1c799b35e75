"""Output retention (services/scheduler/retention.py) over a real database and a real storage service.

Expired outputs lose their objects first and then their records; young ones keep both; when
storage is down nothing is deleted and the next sweep catches up.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from comfyfleet.storage.v1 import storage_service_pb2 as pb
from sqlmodel import select

from services.common.errors import Unavailable
from services.devrun import free_port
from services.scheduler.db.engine import Database
from services.scheduler.db.models import OutputRow, UserRow, WorkflowRow
from services.scheduler.retention import GrpcKeyDeleter, OutputRetention

from .conftest import RunningStorage
from .test_service import put

pytestmark = pytest.mark.timeout(30)
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(f"sqlite+aiosqlite:///{tmp_path}/scheduler.db")
    await database.migrate()
    async with database.sessions() as s, s.begin():
        s.add(UserRow(id="u1", name="u", created_at=NOW, updated_at=NOW))
        s.add(WorkflowRow(id="wf1", user_id="u1", name="w", status="completed", workflow_json="{}",
                          created_at=NOW, updated_at=NOW))
    yield database
    await database.close()


async def add_output(db: Database, storage: RunningStorage, name: str, age: timedelta) -> str:
    key = f"outputs/wf1/9/{name}"
    ref = await put(storage, key, os.urandom(100))
    async with db.sessions() as s, s.begin():
        s.add(OutputRow(id=name, workflow_id="wf1", node_id="9", filename=name, object_key=key,
                        size_bytes=ref.size_bytes, sha256=ref.sha256, content_type=ref.content_type,
                        created_at=NOW - age))
    return key


class Direct:
    """The real DeleteObjects RPC, through the test's channel to the storage service."""

    def __init__(self, storage: RunningStorage) -> None:
        self._stub = storage.stub

    async def delete_keys(self, keys: Sequence[str]) -> int:
        return int((await self._stub.DeleteObjects(pb.DeleteObjectsRequest(keys=list(keys)))).deleted_count)


async def record_ids(db: Database) -> list[str]:
    async with db.sessions() as s:
        return sorted(row.id for row in (await s.exec(select(OutputRow))).all())


async def exists(storage: RunningStorage, key: str) -> bool:
    return key in {f.removeprefix("data/") for f in storage.files()}


async def test_expired_outputs_lose_objects_and_records_young_ones_keep_both(
    db: Database, storage: RunningStorage
) -> None:
    old = await add_output(db, storage, "old.png", timedelta(days=31))
    older = await add_output(db, storage, "older.png", timedelta(days=400))
    young = await add_output(db, storage, "young.png", timedelta(days=29))
    retention = OutputRetention(db, Direct(storage), retention=timedelta(days=30), interval_seconds=3600,
                                clock=lambda: NOW)
    assert await retention.sweep() == 2
    assert await record_ids(db) == ["young.png"]
    assert not await exists(storage, old) and not await exists(storage, older)
    assert await exists(storage, young)
    assert await retention.sweep() == 0


async def test_with_storage_down_nothing_is_deleted_and_a_later_sweep_catches_up(
    db: Database, storage: RunningStorage
) -> None:
    key = await add_output(db, storage, "old.png", timedelta(days=31))
    down = GrpcKeyDeleter(f"127.0.0.1:{free_port()}")
    try:
        retention = OutputRetention(db, down, retention=timedelta(days=30), interval_seconds=3600, clock=lambda: NOW)
        with pytest.raises(Unavailable):
            await retention.sweep()
    finally:
        await down.close()
    assert await record_ids(db) == ["old.png"] and await exists(storage, key)


async def test_retention_zero_keeps_outputs_forever(db: Database, storage: RunningStorage) -> None:
    key = await add_output(db, storage, "ancient.png", timedelta(days=10_000))
    retention = OutputRetention(db, Direct(storage), retention=timedelta(0), interval_seconds=3600, clock=lambda: NOW)
    assert await retention.sweep() == 0
    assert await record_ids(db) == ["ancient.png"] and await exists(storage, key)
