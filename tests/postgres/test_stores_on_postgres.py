"""Store tests of tests/scheduler run again on Postgres: operations whose callers are
cancelled mid-query (test_store.py) and the fair placement batch, whose recursive SQL is
written for both dialects (test_placement_queue.py; its query-plan test is SQLite's own)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from services.scheduler.db.engine import Database
from tests.scheduler.test_driver_statements import (  # noqa: F401  (collected here, against Postgres)
    test_a_change_stores_every_column_as_core_does_and_get_reads_it_back_the_same,
    test_a_driver_error_in_the_writes_of_a_change_fails_that_change_alone,
    test_a_statement_that_leaves_a_column_default_to_the_execution_is_refused,
)
from tests.scheduler.test_group_commit import (  # noqa: F401  (collected here, against Postgres)
    test_a_burst_of_changes_to_several_workflows_keeps_each_ones_order,
    test_concurrent_creates_share_a_transaction_and_a_bad_one_fails_alone,
    test_outputs_dropped_in_a_batch_take_the_ones_added_before_it_in_the_same_batch,
)
from tests.scheduler.test_list_pages import (  # noqa: F401
    test_every_page_from_either_end_is_its_slice_of_newest_first,
)
from tests.scheduler.test_placement_queue import (  # noqa: F401  (collected here, against Postgres)
    test_more_users_than_the_batch_holds_take_turns,
    test_one_users_backlog_does_not_hide_another_users_single_workflow,
    test_only_waiting_workflows_every_priority_oldest_first,
)
from tests.scheduler.test_store import (  # noqa: F401
    test_a_change_whose_caller_is_cancelled_is_still_made_once,
    test_reads_cancelled_at_any_point_leave_nothing_behind,
)

pytestmark = pytest.mark.timeout(60)  # a 3,000-row placement test under a loaded machine


@pytest.fixture
async def db(pg_url: str) -> AsyncIterator[Database]:
    database = Database(pg_url)
    await database.migrate()
    yield database
    await asyncio.wait_for(database.close(), 5)
