"""Events -> deliveries, exactly once per (event, target), crash or not.

For every tailed user (one with a cursor row: an endpoint, or a workflow with a webhook_url)
the dispatcher reads the user's events after its cursor (workflow_events.user_seq, gapless
per user and committed in order), makes a delivery for each target whose filter matches, and
in ONE transaction inserts those deliveries and moves the cursor past the events read. A crash
before that commit leaves the cursor where it was (the events are read again), after it the
deliveries are there: nothing is lost or made twice.

It wakes when the hub publishes an event of a tailed user (one hub watch per tailed user;
the events themselves are read from the database, the hub only says when) and every
`sweep_seconds` for all of them, which covers anything a dropped watch missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Callable

from comfyfleet.scheduler.v1 import workflow_pb2

from services.scheduler.db.models import WebhookDeliveryRow, WebhookEndpointRow
from services.scheduler.hub import OVERFLOW, EventHub
from services.scheduler.records import utcnow
from services.scheduler.webhooks import events
from services.scheduler.webhooks.store import PENDING, WebhookStore

log = logging.getLogger(__name__)

BATCH = 500
TERMINAL_TYPES = frozenset(f"status.{s}" for s in ("completed", "failed", "cancelled", "invalid"))


def deliveries_for(user_id: str, batch: list[workflow_pb2.WorkflowEvent], endpoints: list[WebhookEndpointRow],
                   workflow_urls: dict[str, str]) -> list[WebhookDeliveryRow]:
    """The deliveries a batch of one user's events makes (pure, but for fresh ids and times)."""
    now = utcnow()
    filters = {e.id: events.parse_filters(_loads(e.events_json)) for e in endpoints}
    made: list[WebhookDeliveryRow] = []
    for event in batch:
        kind = events.event_type(event)
        targets = [(e.id, e.url) for e in endpoints if events.matches(filters[e.id], kind)]
        if (url := workflow_urls.get(event.workflow_id)) and events.matches(events.WORKFLOW_URL_FILTER, kind):
            targets.append(("", url))
        if not targets:
            continue
        body = events.body(event)
        made += [WebhookDeliveryRow(id=str(uuid.uuid4()), user_id=user_id, endpoint_id=endpoint_id,
                                    workflow_id=event.workflow_id, event_seq=event.seq, event_type=kind, url=url,
                                    payload=body, state=PENDING, failures=0, window_start=now, next_attempt_at=now,
                                    created_at=now, updated_at=now)
                 for endpoint_id, url in targets]
    return made


def _loads(text: str) -> list[str]:
    value = json.loads(text)
    return [str(v) for v in value] if isinstance(value, list) else ["*"]


class Dispatcher:
    def __init__(self, store: WebhookStore, hub: EventHub, made: Callable[[], None], *,
                 sweep_seconds: float) -> None:
        self.store = store
        self.hub = hub
        self.made = made  # told when deliveries were made (wakes the worker)
        self.sweep_seconds = sweep_seconds
        self._follows: dict[str, asyncio.Task[None]] = {}
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()

    async def start(self) -> None:
        """Tails every user with a cursor (rebuilt from the database at start)."""
        for user_id in await self.store.cursors():
            self.tail(user_id)

    def tail(self, user_id: str) -> None:
        """Follows the user's events from now on (their cursor row must exist)."""
        if user_id not in self._follows:
            self._follows[user_id] = asyncio.create_task(self._follow(user_id), name=f"webhook-tail-{user_id}")
        self._mark(user_id)

    def _mark(self, user_id: str) -> None:
        self._dirty.add(user_id)
        self._wake.set()

    async def _follow(self, user_id: str) -> None:
        while True:
            with self.hub.watch_user(user_id) as watcher:
                while await watcher.queue.get() is not OVERFLOW:
                    while not watcher.queue.empty():  # one wake for a burst
                        if watcher.queue.get_nowait() is OVERFLOW:
                            break
                    self._mark(user_id)
            self._mark(user_id)  # fell behind: read from the database, then watch again

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.sweep_seconds)
            self._wake.clear()
            users = self._dirty or set(self._follows)
            self._dirty = set()
            for user_id in sorted(users):
                try:
                    await self.catch_up(user_id)
                    await self._untail_if_idle(user_id)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("webhook dispatch for user %s failed; retrying at the next sweep", user_id)

    async def catch_up(self, user_id: str) -> int:
        """Makes the deliveries of the user's events after their cursor; returns how many."""
        total = 0
        while True:
            found = await self.store.batch_after(user_id, BATCH)
            if found is None or not found[1]:
                return total
            after, rows, endpoints, urls = found
            batch = [workflow_pb2.WorkflowEvent.FromString(payload) for _, payload in rows]
            made = deliveries_for(user_id, batch, endpoints, urls)
            finished = sorted({e.workflow_id for e in batch if e.workflow_id in urls
                               and events.event_type(e) in TERMINAL_TYPES})
            if await self.store.commit_batch(user_id, after, rows[-1][0], made, finished):
                total += len(made)
                if made:
                    self.made()
            if len(rows) < BATCH:
                return total

    async def _untail_if_idle(self, user_id: str) -> None:
        """Stops following a user who has no endpoint and no unfinished workflow with a webhook_url
        (unless tail() was called for them meanwhile: then their cursor is needed again)."""
        if await self.store.untail_if_idle(user_id) and user_id not in self._dirty:
            follow = self._follows.pop(user_id, None)
            if follow is not None:
                follow.cancel()

    async def close(self) -> None:
        tasks = list(self._follows.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._follows.clear()
