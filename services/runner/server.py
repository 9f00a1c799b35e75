"""Wiring: builds the runner's parts from its settings, runs them, stops them on SIGTERM.
In pool mode (`--pool`, services/runner/pool.py) it runs one such runner per registered runner.

    ComfyUIClient ─┬─ ComfyUIFeed (one websocket, owned task) ── ComfyUIWatch (readiness, schemas)
                   ├─ RunnerAgent (executions, slots) ── Outbox ── RunnerSession (owned task)
    StorageClient ─┘

Shutdown (SIGTERM/SIGINT, or `RunningRunner.shutdown`): take no new work, give held work
`drain_timeout_s` to finish while its events still flow, abandon the rest (cancelled in
ComfyUI; the scheduler requeues it when the session ends), flush the outbox, half-close
the session, cancel the owned tasks, close the clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from prometheus_client import REGISTRY

from services.common import event_loop
from services.common.logs import configure_logging
from services.common.metrics import MetricsListener
from services.runner.agent import RunnerAgent
from services.runner.comfyui_client import ComfyUIClient
from services.runner.comfyui_feed import ComfyUIFeed
from services.runner.comfyui_files import ComfyUIFolders
from services.runner.comfyui_watch import ComfyUIWatch
from services.runner.config import RunnerSettings, load_settings
from services.runner.errors import ConfigError
from services.runner.execution import ExecutionSettings
from services.runner.metrics import RunnerCollector
from services.runner.orphans import CLIENT_PREFIX, stop_orphans
from services.runner.outbox import Outbox
from services.runner.pool import RunningPool, start_pool
from services.runner.session import RunnerIdentity, RunnerSession, SessionSettings
from services.runner.storage_client import StorageClient

log = logging.getLogger("services.runner")


@dataclass
class RunningRunner:
    settings: RunnerSettings
    comfyui: ComfyUIClient
    storage: StorageClient
    feed: ComfyUIFeed
    agent: RunnerAgent
    session: RunnerSession
    tasks: list[asyncio.Task[None]]

    async def shutdown(self, drain_timeout_s: float | None = None) -> None:
        """Stops it; held work gets `drain_timeout_s` (default: the setting) to finish."""
        self.agent.drain()
        drain_s = self.settings.drain_timeout_s if drain_timeout_s is None else drain_timeout_s
        if not await self.agent.wait_idle(drain_s):
            log.warning("drain timed out with %d held; abandoning them", self.agent.in_flight())
        await self.agent.close()
        if self.session.connected.is_set():
            await self.session.flush(2.0)
        await self.session.stop(2.0)
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.session.close()
        await self.storage.close()
        await self.comfyui.close()
        log.info("runner stopped")


async def start_runner(settings: RunnerSettings) -> RunningRunner:
    """Builds and starts every part; returns once the background tasks are running."""
    comfyui = ComfyUIClient(settings.comfyui_url, request_timeout_s=settings.comfyui_request_timeout_s,
                            headers=dict(settings.comfyui_headers),
                            folders=ComfyUIFolders(settings.comfyui_dir) if settings.comfyui_dir else None)
    storage = StorageClient(settings.storage, settings.security)
    client_id = f"{CLIENT_PREFIX}{uuid.uuid4()}"
    await stop_orphans(comfyui, client_id)  # before the Hello: what we held may be placed elsewhere at once
    feed = ComfyUIFeed(comfyui, client_id, backoff=settings.comfyui_backoff)
    outbox = Outbox(window_s=settings.default_lease_s)
    watch = ComfyUIWatch(comfyui, feed, unready_after_s=settings.comfyui_unready_after_s)
    agent = RunnerAgent(
        comfyui=comfyui,
        feed=feed,
        storage=storage,
        outbox=outbox,
        slots=settings.slots,
        settings=ExecutionSettings(
            progress_interval_s=settings.progress_interval_s,
            poll_interval_s=settings.poll_interval_s,
            comfyui_down_timeout_s=settings.comfyui_down_timeout_s,
            comfyui_unready_after_s=settings.comfyui_unready_after_s,
            queue_read_grace_s=settings.queue_read_grace_s,
        ),
        schemas=watch.schemas,
    )
    session = RunnerSession(
        settings.scheduler,
        RunnerIdentity(token=settings.token, name=settings.name, tags=settings.tags, slots=settings.slots,
                       runner_id=settings.runner_id),
        agent,
        outbox,
        watch,
        SessionSettings(
            backoff=settings.scheduler_backoff,
            welcome_timeout_s=settings.welcome_timeout_s,
            default_heartbeat_s=settings.default_heartbeat_s,
            default_lease_s=settings.default_lease_s,
        ),
        settings.security,
    )
    tasks = [
        asyncio.create_task(feed.run(), name="comfyui feed"),
        asyncio.create_task(session.run(), name="scheduler session"),
    ]
    log.info(
        "runner %r: scheduler %s, storage %s, ComfyUI %s, tags %s, %d slot(s)",
        settings.name,
        settings.scheduler,
        settings.storage,
        settings.comfyui_url,
        ",".join(settings.tags) or "-",
        settings.slots,
    )
    return RunningRunner(settings, comfyui, storage, feed, agent, session, tasks)


async def serve(settings: RunnerSettings) -> None:
    """Runs the runner until SIGTERM or SIGINT, then shuts it down cleanly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    running: RunningRunner | RunningPool = (
        await start_pool(settings, start_runner) if settings.pool else await start_runner(settings))
    metrics = await MetricsListener(settings.metrics_host, settings.metrics_port).start() \
        if settings.metrics_port else None
    collector = RunnerCollector(lambda: _runners(running))
    REGISTRY.register(collector)
    await stop.wait()
    log.info("signal received: stopping")
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(Exception):
            loop.remove_signal_handler(sig)
    await running.shutdown()
    REGISTRY.unregister(collector)
    if metrics is not None:
        await metrics.close()


def _runners(running: RunningRunner | RunningPool) -> list[RunningRunner]:
    if isinstance(running, RunningRunner):
        return [running]
    return [agent for _, agent in running.pool.agents.values() if isinstance(agent, RunningRunner)]


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = load_settings(sys.argv[1:] if argv is None else argv, os.environ)
    except ConfigError as err:
        print(f"runner: {err.message}", file=sys.stderr)
        return 2
    configure_logging(settings.log_format, settings.log_level)
    event_loop.run(serve(settings))
    return 0
