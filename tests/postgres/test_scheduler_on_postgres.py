"""The scheduler's component tests (tests/scheduler/test_service.py), run again with the
scheduler on Postgres: create, get, list, watch, cancel, runner sessions, lease expiry and
requeue. The tests are the same functions; only the `scheduler` fixture differs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.scheduler.harness import Scheduler, running_scheduler
from tests.scheduler.test_group_commit import (  # noqa: F401
    test_a_burst_of_runner_events_for_several_workflows_applies_in_order,
)
from tests.scheduler.test_service import (  # noqa: F401  (collected here, against Postgres)
    test_a_lost_runners_workflow_is_requeued_after_the_lease_and_runs_elsewhere,
    test_a_runner_that_comes_back_without_its_workflow_gets_it_again,
    test_a_runner_that_reconnects_within_the_lease_keeps_its_workflow,
    test_a_runner_that_reports_completion_and_dies_at_once,
    test_a_runner_without_a_valid_runner_token_is_refused,
    test_a_tagged_workflow_waits_for_a_runner_with_every_tag,
    test_a_workflow_runs_on_a_runner_and_watchers_see_every_step_once,
    test_another_users_workflow_is_not_found_like_one_that_does_not_exist,
    test_calls_without_a_valid_api_token_are_unauthenticated,
    test_cancel_of_a_running_workflow_asks_its_runner,
    test_cancel_of_an_unassigned_workflow_is_immediate_and_of_a_finished_one_refused,
    test_create_answers_with_the_accepted_workflow_and_get_returns_it,
    test_create_rejects_bad_input_with_a_reason_and_stores_nothing,
    test_create_with_an_id_already_taken_is_a_conflict_and_changes_nothing,
    test_list_is_newest_first_paginated_and_only_the_callers,
    test_watching_a_finished_workflow,
)

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def scheduler(tmp_path: Path, pg_url: str) -> AsyncIterator[Scheduler]:
    async with running_scheduler(tmp_path, pg_url) as s:
        yield s
