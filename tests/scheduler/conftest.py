"""Shared fixtures of the scheduler's tests: `db`, a migrated SQLite file database, and
`scheduler`, a running scheduler on one (the tests of tests/postgres that reuse these tests
define their own `db` and `scheduler` on Postgres)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.scheduler.db.engine import Database

from .harness import Scheduler, running_scheduler


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(f"sqlite+aiosqlite:///{tmp_path}/s.db")
    await database.migrate()
    yield database
    await asyncio.wait_for(database.close(), 5)


@pytest.fixture
async def scheduler(tmp_path: Path) -> AsyncIterator[Scheduler]:
    async with running_scheduler(tmp_path) as s:
        yield s
