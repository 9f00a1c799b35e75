"""Wiring of the webhook parts for one active scheduler: store, sealing key, sender, worker,
dispatcher and the domain object the servicers use; `close` stops the background tasks.

Without a key (no SCHEDULER_WEBHOOK_KEY_FILE and no bootstrap dir) webhooks are off: the
API answers 409 WEBHOOKS_DISABLED and nothing runs in the background.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from services.scheduler.db.engine import Database
from services.scheduler.db.models import UserRow
from services.scheduler.hub import EventHub
from services.scheduler.webhooks.dispatcher import Dispatcher
from services.scheduler.webhooks.sealing import SecretBox, load_key
from services.scheduler.webhooks.sender import Sender
from services.scheduler.webhooks.service import Webhooks
from services.scheduler.webhooks.settings import WebhookSettings
from services.scheduler.webhooks.store import WebhookStore
from services.scheduler.webhooks.worker import DeliveryWorker

log = logging.getLogger(__name__)


@dataclass
class WebhookRuntime:
    webhooks: Webhooks
    worker: DeliveryWorker | None = None
    dispatcher: Dispatcher | None = None
    sender: Sender | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    async def start(cls, settings: WebhookSettings, key_path: Path | None, *, generated_key: bool, db: Database,
                    hub: EventHub, workflow_exists: Callable[[UserRow, str], Awaitable[object]]) -> WebhookRuntime:
        store = WebhookStore(db)
        if key_path is None:
            log.info("webhooks are off: no SCHEDULER_WEBHOOK_KEY_FILE")
            return cls(Webhooks(store, None, settings.targets, None, wake_worker=lambda: None,
                                workflow_exists=workflow_exists))
        box = SecretBox(await asyncio.to_thread(load_key, key_path, create=generated_key))
        sender = Sender(settings.targets, timeout_seconds=settings.timeout_seconds)
        worker = DeliveryWorker(store, sender, box, settings.retry, concurrency=settings.concurrency,
                                log_days=settings.log_days)
        dispatcher = Dispatcher(store, hub, worker.wake, sweep_seconds=settings.sweep_seconds)
        await dispatcher.start()
        webhooks = Webhooks(store, box, settings.targets, dispatcher, wake_worker=worker.wake,
                            workflow_exists=workflow_exists)
        tasks = [asyncio.create_task(worker.run(), name="webhook-worker"),
                 asyncio.create_task(dispatcher.run(), name="webhook-dispatcher")]
        return cls(webhooks, worker, dispatcher, sender, tasks)

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.dispatcher is not None:
            await self.dispatcher.close()
        if self.worker is not None:
            await self.worker.close()
        if self.sender is not None:
            await self.sender.close()
