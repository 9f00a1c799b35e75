"""The fleet-wide watch and per-user event numbers (tests/scheduler/test_fleet_events.py), run
again with the scheduler on Postgres, where concurrent transactions really overlap."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.scheduler.harness import Scheduler, running_scheduler
from tests.scheduler.test_fleet_events import (  # noqa: F401  (collected here, against Postgres)
    test_a_resumed_watch_gets_exactly_the_events_after_its_cursor,
    test_numbers_are_gapless_and_per_user_across_workflows_and_concurrent_changes,
    test_replay_joins_live_events_without_gap_or_duplicate_and_shows_only_the_callers,
    test_the_migration_numbers_the_events_of_an_older_database,
)

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def scheduler(tmp_path: Path, pg_url: str) -> AsyncIterator[Scheduler]:
    async with running_scheduler(tmp_path, pg_url) as s:
        yield s


@pytest.fixture
def database_url(pg_url: str) -> str:
    return pg_url
