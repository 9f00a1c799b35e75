"""Fan-out of committed workflow events to watchers: one broadcaster per watched workflow, and
one per user with a fleet-wide watch (every event of the user's workflows).

Each watcher has a bounded queue. A watcher that falls `capacity` events behind is dropped
(its queue gets the OVERFLOW marker); it reconnects with Last-Event-ID and loses nothing,
because the log in the database is the source of truth.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

from comfyfleet.scheduler.v1 import workflow_pb2

OVERFLOW = None  # put into a watcher's queue when it fell too far behind


class Watcher:
    def __init__(self, capacity: int) -> None:
        self.queue: asyncio.Queue[workflow_pb2.WorkflowEvent | None] = asyncio.Queue(capacity + 1)
        self.capacity = capacity
        self.dropped = False

    def offer(self, event: workflow_pb2.WorkflowEvent) -> None:
        if self.dropped:
            return
        if self.queue.qsize() >= self.capacity:
            self.dropped = True
            self.queue.put_nowait(OVERFLOW)
            return
        self.queue.put_nowait(event)


class EventHub:
    def __init__(self, capacity: int = 1024) -> None:
        self.capacity = capacity
        self._watchers: dict[str, set[Watcher]] = {}  # by workflow id
        self._user_watchers: dict[str, set[Watcher]] = {}  # by user id

    @contextmanager
    def watch(self, workflow_id: str) -> Iterator[Watcher]:
        with self._watch(self._watchers, workflow_id) as watcher:
            yield watcher

    @contextmanager
    def watch_user(self, user_id: str) -> Iterator[Watcher]:
        """Every event of the user's workflows (events carry their owner's user_id)."""
        with self._watch(self._user_watchers, user_id) as watcher:
            yield watcher

    @contextmanager
    def _watch(self, groups: dict[str, set[Watcher]], key: str) -> Iterator[Watcher]:
        watcher = Watcher(self.capacity)
        groups.setdefault(key, set()).add(watcher)
        try:
            yield watcher
        finally:
            group = groups.get(key)
            if group is not None:
                group.discard(watcher)
                if not group:
                    del groups[key]

    def publish(self, events: list[workflow_pb2.WorkflowEvent]) -> None:
        for event in events:
            for watcher in self._watchers.get(event.workflow_id, ()):
                watcher.offer(event)
            if self._user_watchers:
                for watcher in self._user_watchers.get(event.user_id, ()):
                    watcher.offer(event)

    def watcher_count(self, workflow_id: str) -> int:
        return len(self._watchers.get(workflow_id, ()))

    def user_watcher_count(self, user_id: str) -> int:
        return len(self._user_watchers.get(user_id, ()))
