"""The webhook dispatcher's tests (tests/scheduler/webhooks/test_dispatcher.py) on Postgres:
the cursor, the one-transaction commit and the ON CONFLICT inserts in its dialect."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.scheduler.webhooks.test_dispatcher import (  # noqa: F401  (collected here, with the world below)
    World,
    test_a_hub_notification_wakes_it_and_filters_apply,
    test_no_backfill_no_loss_no_duplicate_across_a_crash_and_a_restart,
    test_workflow_urls_get_status_events_and_finished_users_are_untailed,
    world_on,
)


@pytest.fixture
async def world(pg_url: str) -> AsyncIterator[World]:
    async with world_on(pg_url) as w:
        yield w
