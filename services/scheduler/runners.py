"""What users do with runners: register by endpoint, read, page, update, delete, interrupt,
and issue tokens for self-registering agents.

The rows live in `RunnerStore`; what a connected runner is doing lives in the `Fleet`; the
lifecycle effects (disable, delete) go through `Execution`, which owns placement.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

from comfyfleet.scheduler.v1 import runner_pb2, runner_service_pb2

from services.scheduler.core import runner_fields
from services.scheduler.core.state import Status
from services.scheduler.db.identity_store import RUNNER, IdentityStore
from services.scheduler.db.models import RunnerRow, UserRow
from services.scheduler.db.runner_store import RunnerStore
from services.scheduler.db.workflow_store import WorkflowStore
from services.scheduler.errors import Conflict, InvalidArgument
from services.scheduler.execution import Execution
from services.scheduler.fleet import Fleet
from services.scheduler.limits import Limits
from services.scheduler.records import PB_TO_RUNNER_STATUS, runner_pb, utcnow
from services.scheduler.workflows import Workflows

UPDATABLE = ("name", "endpoint", "headers", "tags", "status")
MAX_TOKEN_TTL_SECONDS = 10 * 365 * 24 * 3600


def page_args(page: int, per_page: int) -> tuple[int, int]:
    page, per_page = page or 1, per_page or 10
    if page < 1:
        raise InvalidArgument("page must be 1 or more", details=[{"field": "page"}])
    if not 1 <= per_page <= 100:
        raise InvalidArgument("per_page must be 1 to 100", details=[{"field": "per_page"}])
    return page, per_page


class Runners:
    def __init__(
        self,
        store: RunnerStore,
        identity: IdentityStore,
        workflow_store: WorkflowStore,
        fleet: Fleet,
        execution: Execution,
        workflows: Workflows,
        limits: Limits | None = None,
        pool_changed: Callable[[], None] = lambda: None,
    ) -> None:
        self.limits = limits
        # Called after a registered runner is created, updated or deleted (wakes WatchPool).
        self.pool_changed = pool_changed
        self.store = store
        self.identity = identity
        self.workflow_store = workflow_store
        self.fleet = fleet
        self.execution = execution
        self.workflows = workflows

    def present(self, row: RunnerRow) -> runner_pb2.Runner:
        session = self.fleet.connected(row.id)
        online = session is not None and not session.closed
        return runner_pb(row, online=online, in_flight=len(session.held) if session else 0)

    async def create(self, user: UserRow, req: runner_service_pb2.CreateRunnerRequest) -> runner_pb2.Runner:
        now = utcnow()
        row = RunnerRow(
            id=str(uuid.uuid4()),
            user_id=user.id,
            name=runner_fields.check_name(req.name),
            endpoint=runner_fields.check_endpoint(req.endpoint),
            headers_json=json.dumps(runner_fields.check_headers(dict(req.headers))),
            tags_json=json.dumps(runner_fields.check_tags(list(req.tags))),
            status="active",
            created_at=now,
            updated_at=now,
        )
        if self.limits is not None:
            await self.limits.check_new_runner(user)
        created = await self.store.create(row)
        self.pool_changed()
        return self.present(created)

    async def get(self, user: UserRow, runner_id: str) -> runner_pb2.Runner:
        return self.present(await self.store.get(runner_id, user.id))

    async def list_page(
        self, user: UserRow, req: runner_service_pb2.ListRunnersRequest
    ) -> tuple[list[runner_pb2.Runner], int]:
        page, per_page = page_args(req.page, req.per_page)
        status = PB_TO_RUNNER_STATUS.get(req.status) if req.status else None
        rows, total = await self.store.list_page(user.id, page=page, per_page=per_page, status=status)
        return [self.present(r) for r in rows], total

    async def update(self, user: UserRow, req: runner_service_pb2.UpdateRunnerRequest) -> runner_pb2.Runner:
        paths = list(req.update_mask.paths)
        unknown = [p for p in paths if p not in UPDATABLE]
        if unknown:
            raise InvalidArgument(f"cannot update {', '.join(unknown)}: only {', '.join(UPDATABLE)}",
                                  reason="UNKNOWN_FIELD", details=[{"field": p} for p in unknown])
        new = req.runner
        values: dict[str, str] = {}
        if "name" in paths:
            values["name"] = runner_fields.check_name(new.name)
        if "endpoint" in paths:
            values["endpoint"] = runner_fields.check_endpoint(new.endpoint)
        if "headers" in paths:
            values["headers_json"] = json.dumps(runner_fields.check_headers(dict(new.headers)))
        if "tags" in paths:
            values["tags_json"] = json.dumps(runner_fields.check_tags(list(new.tags)))
        if "status" in paths:
            if new.status not in PB_TO_RUNNER_STATUS:
                raise InvalidArgument("status must be active or disabled", reason="INVALID_STATUS",
                                      details=[{"field": "status"}])
            values["status"] = PB_TO_RUNNER_STATUS[new.status]

        def mutate(row: RunnerRow) -> None:
            for key, value in values.items():
                setattr(row, key, value)

        row = await self.store.update(req.id, user.id, mutate)
        if "status" in values:
            self.execution.set_runner_enabled(row.id, row.status == "active")
        self.pool_changed()
        return self.present(row)

    async def delete(self, user: UserRow, runner_id: str) -> None:
        await self.store.delete(runner_id, user.id)
        await self.execution.delete_runner(runner_id)
        self.pool_changed()

    async def interrupt(self, user: UserRow, runner_id: str) -> list[str]:
        """Asks the runner to stop the workflows its ComfyUI is running now (cancel, on it)."""
        await self.store.get(runner_id, user.id)
        session = self.fleet.connected(runner_id)
        if session is None or session.closed:
            raise Conflict("runner is offline", reason="RUNNER_OFFLINE", details=[{"id": runner_id}])
        interrupted = []
        for workflow_id in list(session.held):
            row, _ = await self.workflow_store.get(workflow_id)
            if row.status == Status.RUNNING.value:
                try:
                    await self.workflows.cancel_any(workflow_id)
                except Conflict:
                    continue  # it finished meanwhile
                interrupted.append(workflow_id)
        return interrupted

    async def create_token(
        self, user: UserRow, req: runner_service_pb2.CreateRunnerTokenRequest
    ) -> tuple[str, datetime | None]:
        if not 0 <= req.ttl_seconds <= MAX_TOKEN_TTL_SECONDS:
            raise InvalidArgument(f"ttl_seconds must be 0 to {MAX_TOKEN_TTL_SECONDS}",
                                  details=[{"field": "ttl_seconds"}])
        ttl = timedelta(seconds=req.ttl_seconds) if req.ttl_seconds else None
        token = await self.identity.issue_token(user.id, RUNNER, ttl)
        return token, utcnow() + ttl if ttl else None
