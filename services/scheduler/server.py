"""Wiring: settings, database, stores, fleet, hub, servicers, background tasks, gRPC server.

`SchedulerApp.start` builds every object `run` serves once this process is the active
scheduler (standby.py); tests build the same app and serve it
on port 0 (`register` + `stop`), so the wiring exists once.

Input files are deleted when their workflow finishes (input_sweeper.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from dataclasses import dataclass

import grpc
from comfyfleet.runner.v1 import runner_pool_service_pb2_grpc, runner_session_service_pb2_grpc
from comfyfleet.scheduler.v1 import (
    event_service_pb2_grpc,
    runner_service_pb2_grpc,
    template_service_pb2_grpc,
    user_service_pb2_grpc,
    webhook_service_pb2_grpc,
    workflow_service_pb2_grpc,
)

from services.common import event_loop
from services.common.logs import configure_logging
from services.common.metrics import start_metrics
from services.common.service_auth import Credential, Rules
from services.scheduler.bootstrap import ensure_dev_tokens
from services.scheduler.config import Settings
from services.scheduler.db.engine import Database
from services.scheduler.db.event_numbers import UserEventLog
from services.scheduler.db.identity_store import IdentityStore
from services.scheduler.db.runner_store import RunnerStore
from services.scheduler.db.template_store import TemplateStore
from services.scheduler.db.workflow_store import WorkflowStore
from services.scheduler.event_servicer import EventServicer
from services.scheduler.execution import Execution
from services.scheduler.fleet import Fleet
from services.scheduler.hub import EventHub
from services.scheduler.input_sweeper import InputSweeper
from services.scheduler.limits import Limits
from services.scheduler.metrics import SchedulerMetrics
from services.scheduler.pool_servicer import PoolChanges, RunnerPoolServicer
from services.scheduler.retention import OutputRetention
from services.scheduler.runner_servicer import RunnerServicer
from services.scheduler.runners import Runners
from services.scheduler.session_servicer import RunnerSessionServicer
from services.scheduler.standby import leadership_for, serve_when_active
from services.scheduler.storage_client import StorageClient
from services.scheduler.template_servicer import TemplateServicer
from services.scheduler.templates import Templates
from services.scheduler.webhooks.runtime import WebhookRuntime
from services.scheduler.webhooks.servicer import WebhookServicer, WebhookTemplateServicer, WebhookWorkflowServicer
from services.scheduler.workflow_servicer import UserServicer, WorkflowServicer
from services.scheduler.workflows import Workflows

log = logging.getLogger("services.scheduler")

SERVICE_NAMES = [
    "comfyfleet.scheduler.v1.WorkflowService",
    "comfyfleet.scheduler.v1.UserService",
    "comfyfleet.scheduler.v1.RunnerService",
    "comfyfleet.scheduler.v1.TemplateService",
    "comfyfleet.scheduler.v1.WebhookService",
    "comfyfleet.scheduler.v1.EventService",
    "comfyfleet.runner.v1.RunnerSessionService",
    "comfyfleet.runner.v1.RunnerPoolService",
]
# Who may call what (services/common/service_auth.py): a runner session shows its runner token
# in Hello, a pool watch an administrator's pool token; every other service (and any added to
# SERVICE_NAMES later) takes the caller's user token, which its servicer checks.
CREDENTIALS = {
    "comfyfleet.runner.v1.RunnerSessionService": {Credential.RUNNER},
    "comfyfleet.runner.v1.RunnerPoolService": {Credential.POOL},
}


def rules() -> Rules:
    return {f"/{name}/": CREDENTIALS.get(name, {Credential.USER}) for name in SERVICE_NAMES}


@dataclass
class SchedulerApp:
    """Every long-lived object of one scheduler process."""

    settings: Settings
    db: Database
    identity: IdentityStore
    store: WorkflowStore
    storage: StorageClient
    execution: Execution
    workflows: Workflows
    runners: Runners
    templates: Templates
    limits: Limits
    sessions: RunnerSessionServicer
    placement: asyncio.Task[None]
    sweeper: InputSweeper
    retention: OutputRetention | None = None
    pool: RunnerPoolServicer | None = None
    webhooks: WebhookRuntime | None = None

    @classmethod
    async def start(cls, settings: Settings) -> SchedulerApp:
        db = Database(settings.database_url)
        await db.migrate()
        identity = IdentityStore(db, token_cache_seconds=settings.token_cache_seconds)
        if (path := settings.bootstrap_path) is not None:
            await ensure_dev_tokens(identity, path)
        store = WorkflowStore(db)
        hub = EventHub()
        fleet = Fleet()
        storage = StorageClient(settings.storage_address, settings.security)
        runner_store, template_store = RunnerStore(db), TemplateStore(db)
        limits = Limits(settings.tier_limits, store, runner_store, template_store)
        sweeper = InputSweeper(storage)
        execution = Execution(settings, store, hub, fleet, finished=sweeper.finished)
        workflows = Workflows(store, identity, hub, fleet, placement=execution, finished=sweeper.finished,
                              storage=storage, limits=limits)
        pool_changes = PoolChanges()
        runners = Runners(runner_store, identity, store, fleet, execution, workflows, limits,
                          pool_changed=pool_changes.changed)
        templates = Templates(template_store, workflows, limits)
        sessions = RunnerSessionServicer(settings, identity, store, fleet, execution)
        await sessions.expire_orphans_after_start()
        placement = asyncio.create_task(execution.run_placement(), name="placement")
        execution.kick()
        retention = OutputRetention.start(db, settings.storage_address, retention_days=settings.output_retention_days,
                                          interval_seconds=settings.retention_sweep_seconds, security=settings.security)
        webhooks = await WebhookRuntime.start(
            settings.webhooks, settings.webhook_key_path, generated_key=not settings.webhooks.key_file, db=db,
            hub=hub, workflow_exists=workflows.get)
        return cls(settings, db, identity, store, storage, execution, workflows, runners, templates, limits,
                   sessions, placement, sweeper, retention, RunnerPoolServicer(identity, runner_store, pool_changes),
                   webhooks)

    def register(self, server: grpc.aio.Server) -> None:
        workflow_service_pb2_grpc.add_WorkflowServiceServicer_to_server(
            WorkflowServicer(self.identity, self.workflows) if self.webhooks is None
            else WebhookWorkflowServicer(self.identity, self.workflows, self.webhooks.webhooks), server)
        user_service_pb2_grpc.add_UserServiceServicer_to_server(UserServicer(self.identity, self.limits), server)
        runner_service_pb2_grpc.add_RunnerServiceServicer_to_server(RunnerServicer(self.identity, self.runners), server)
        template_service_pb2_grpc.add_TemplateServiceServicer_to_server(
            TemplateServicer(self.identity, self.templates) if self.webhooks is None
            else WebhookTemplateServicer(self.identity, self.templates, self.webhooks.webhooks), server)
        if self.webhooks is not None:
            webhook_service_pb2_grpc.add_WebhookServiceServicer_to_server(
                WebhookServicer(self.identity, self.webhooks.webhooks), server)
        event_service_pb2_grpc.add_EventServiceServicer_to_server(
            EventServicer(self.identity, UserEventLog(self.db), self.execution.hub), server)
        runner_session_service_pb2_grpc.add_RunnerSessionServiceServicer_to_server(self.sessions, server)
        if self.pool is not None:
            runner_pool_service_pb2_grpc.add_RunnerPoolServiceServicer_to_server(self.pool, server)

    async def drain(self) -> None:
        """Ends the runner sessions and pool watches, so they do not hold up the server's stop."""
        if self.pool is not None:
            self.pool.close()
        await self.sessions.close()

    async def stop(self) -> None:
        self.placement.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.placement
        if self.retention is not None:
            await self.retention.close()
        await self.sessions.close()
        await self.sweeper.close()
        if self.webhooks is not None:
            await self.webhooks.close()
        await self.storage.close()
        await self.db.close()


async def run(settings: Settings) -> int:
    """Serves once this process is the active scheduler (standby.py; on SQLite at once).
    /metrics (metrics.py) is served from the start; its gauges follow the app once active."""
    metrics = SchedulerMetrics()
    listener = await start_metrics(settings.listen, settings.metrics_port, refresh=metrics.refresh)

    async def start() -> SchedulerApp:
        return metrics.watch(await SchedulerApp.start(settings))

    try:
        return await serve_when_active(settings.listen, leadership_for(settings.database_url), start,
                                       service_names=SERVICE_NAMES, auth=settings.security.server_auth(rules()),
                                       tls=settings.security.tls)
    finally:
        if listener is not None:
            await listener.close()


def main() -> None:
    settings = Settings.from_env()
    configure_logging(settings.log_format)
    sys.exit(event_loop.run(run(settings)))
