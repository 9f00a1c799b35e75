"""Tier limits, enforced: each check counts what the user has now and raises PermissionDenied
(HTTP 403, reason TIER_LIMIT) with API.md's message when one more would be over the limit.

The counts are read, then the row is written, without a lock in between: two requests racing
at the limit may both pass. A limit is a fair-use bound, not an invariant, so that is accepted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict

from services.scheduler.core.tiers import MESSAGES, TierLimits, for_tier
from services.scheduler.db.models import UserRow
from services.scheduler.db.runner_store import RunnerStore
from services.scheduler.db.template_store import TemplateStore
from services.scheduler.db.workflow_store import WorkflowStore
from services.scheduler.errors import PermissionDenied


def over(limit: str, maximum: int, used: int) -> PermissionDenied:
    return PermissionDenied(MESSAGES[limit], reason="TIER_LIMIT",
                            details=[{"limit": limit, "max": maximum, "used": used}])


class Limits:
    def __init__(self, tiers: Mapping[str, TierLimits], workflows: WorkflowStore, runners: RunnerStore,
                 templates: TemplateStore) -> None:
        self.tiers = tiers
        self.workflows = workflows
        self.runners = runners
        self.templates = templates

    def of(self, user: UserRow) -> TierLimits:
        return for_tier(self.tiers, user.tier)

    def check_parameters(self, user: UserRow, count: int) -> None:
        maximum = self.of(user).parameters_per_workflow
        if count > maximum:
            raise over("parameters_per_workflow", maximum, count)

    async def check_new_workflow(self, user: UserRow) -> None:
        maximum = self.of(user).concurrent_workflows
        if (used := await self.workflows.count_open(user.id)) >= maximum:
            raise over("concurrent_workflows", maximum, used)

    async def check_new_runner(self, user: UserRow) -> None:
        maximum = self.of(user).runners
        if (used := await self.runners.count(user.id)) >= maximum:
            raise over("runners", maximum, used)

    async def check_new_template(self, user: UserRow) -> None:
        maximum = self.of(user).templates
        if (used := await self.templates.count(user.id)) >= maximum:
            raise over("templates", maximum, used)

    async def usage(self, user: UserRow) -> dict[str, tuple[int, int | None]]:
        """limit name -> (max, used); parameters are per workflow, so they have no usage."""
        maxima = asdict(self.of(user))
        return {
            "parameters_per_workflow": (maxima["parameters_per_workflow"], None),
            "runners": (maxima["runners"], await self.runners.count(user.id)),
            "templates": (maxima["templates"], await self.templates.count(user.id)),
            "concurrent_workflows": (maxima["concurrent_workflows"], await self.workflows.count_open(user.id)),
        }
