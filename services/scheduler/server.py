"""Wiring: settings, database, stores, fleet, hub, servicers, background tasks, gRPC server."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from comfyfleet.runner.v1 import runner_session_service_pb2_grpc
from comfyfleet.scheduler.v1 import user_service_pb2_grpc, workflow_service_pb2_grpc

from services.common.grpc_server import serve
from services.scheduler.bootstrap import ensure_dev_tokens
from services.scheduler.config import Settings
from services.scheduler.db.engine import Database
from services.scheduler.db.identity_store import IdentityStore
from services.scheduler.db.models import WorkflowRow
from services.scheduler.db.workflow_store import WorkflowStore
from services.scheduler.execution import Execution
from services.scheduler.fleet import Fleet
from services.scheduler.hub import EventHub
from services.scheduler.session_servicer import RunnerSessionServicer
from services.scheduler.storage_client import StorageClient
from services.scheduler.workflow_servicer import UserServicer, WorkflowServicer
from services.scheduler.workflows import Workflows

log = logging.getLogger("services.scheduler")

SERVICE_NAMES = [
    "comfyfleet.scheduler.v1.WorkflowService",
    "comfyfleet.scheduler.v1.UserService",
    "comfyfleet.runner.v1.RunnerSessionService",
]


class InputSweeper:
    """Deletes the input files of finished workflows, in owned background tasks."""

    def __init__(self, storage: StorageClient) -> None:
        self.storage = storage
        self.tasks: set[asyncio.Task[None]] = set()

    def finished(self, row: WorkflowRow) -> None:
        task = asyncio.create_task(self._delete(row.id))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _delete(self, workflow_id: str) -> None:
        try:
            await self.storage.delete_prefix(f"inputs/{workflow_id}/")
        except Exception as err:  # storage down: the retention sweep (storage issue) catches it later
            log.warning("could not delete inputs of %s: %s", workflow_id, err)

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def run(settings: Settings) -> None:
    db = Database(settings.database_url)
    await db.migrate()
    identity = IdentityStore(db)
    if (path := settings.bootstrap_path) is not None:
        await ensure_dev_tokens(identity, path)
    store = WorkflowStore(db)
    hub = EventHub()
    fleet = Fleet()
    storage = StorageClient(settings.storage_address)
    sweeper = InputSweeper(storage)
    execution = Execution(settings, store, hub, fleet, finished=sweeper.finished)
    workflows = Workflows(store, identity, hub, fleet, kick=execution.kick, finished=sweeper.finished)
    sessions = RunnerSessionServicer(settings, identity, store, fleet, execution)
    await sessions.expire_orphans_after_start()
    placement = asyncio.create_task(execution.run_placement(), name="placement")
    execution.kick()

    def register(server: object) -> None:
        workflow_service_pb2_grpc.add_WorkflowServiceServicer_to_server(WorkflowServicer(identity, workflows), server)
        user_service_pb2_grpc.add_UserServiceServicer_to_server(UserServicer(identity), server)
        runner_session_service_pb2_grpc.add_RunnerSessionServiceServicer_to_server(sessions, server)

    async def on_stop() -> None:
        placement.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await placement
        await sessions.close()
        await sweeper.close()
        await storage.close()
        await db.close()

    await serve(settings.listen, register, service_names=SERVICE_NAMES, on_stop=on_stop,
                before_stop=sessions.close)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(run(Settings.from_env()))
