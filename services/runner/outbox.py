"""Events on their way to the scheduler: numbered, kept while unsent or unconfirmed, resent.

`Outbox.emit` stamps each event with its `runner_seq` (1, 2, 3, ... per (workflow_id, attempt))
and the wall-clock time, and queues it. The session writes queued events in order and marks
each one written; `next_batch` gives it what is queued together (up to a count and a size) to
write as one message, so that e.g. `output_stored` and `completed`, emitted a moment apart,
reach the scheduler together and commit in one transaction. The writer may `wait` a moment
(`linger_s`) for more events to join the first one, unless an event that ends a run
(`URGENT_KINDS`) is queued: one workflow at a time, its run's ~8 events go as 2 messages
and commits instead of ~4, and its end is never held back. The protocol has no
acknowledgement, so a written event is kept for a `window` (the lease): if the stream breaks,
`rewind` puts the events written within the window back in front of the queue and they are
resent on the next stream; the scheduler drops the repeats by `runner_seq`. An event older
than the lease that the scheduler did not get would have cost us the lease anyway, and then
Welcome.abandon tells the runner what to drop.

Single-threaded asyncio: no locks; `wait` wakes the writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass

from comfyfleet.runner.v1 import runner_event_pb2

WorkflowKey = tuple[str, int]  # (workflow_id, attempt)

# Events that end a run: written as soon as they are queued (the workflow's end, its runner
# slot and whoever waits on them), with whatever is queued before them.
URGENT_KINDS = frozenset({"completed", "failed", "cancelled", "invalid", "handed_back"})


@dataclass
class _Written:
    at: float
    event: runner_event_pb2.RunnerEvent


class Outbox:
    def __init__(self, *, window_s: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self._clock = clock
        self._seq: dict[WorkflowKey, int] = {}
        self._queued: deque[runner_event_pb2.RunnerEvent] = deque()
        self._written: deque[_Written] = deque()
        self._ready = asyncio.Event()
        self._empty = asyncio.Event()
        self._empty.set()
        self._live: Counter[WorkflowKey] = Counter()  # events per key still queued or written
        self._finished: set[WorkflowKey] = set()

    def emit(self, key: WorkflowKey, event: runner_event_pb2.RunnerEvent) -> runner_event_pb2.RunnerEvent:
        """Numbers and queues `event` (whose kind is set) for `key`; returns it."""
        seq = self._seq.get(key, 0) + 1
        self._seq[key] = seq
        event.workflow_id, event.attempt, event.runner_seq = key[0], key[1], seq
        event.time.FromNanoseconds(time.time_ns())  # GetCurrentTime goes through a datetime
        self._queued.append(event)
        self._live[key] += 1
        self._ready.set()
        self._empty.clear()
        return event

    def next_batch(self, max_events: int, max_bytes: int) -> list[runner_event_pb2.RunnerEvent]:
        """The oldest queued events, left queued until `written` is called for each, in order:
        at most `max_events`, and no more than `max_bytes` serialized (but at least one)."""
        batch: list[runner_event_pb2.RunnerEvent] = []
        size = 0
        for event in self._queued:
            size += event.ByteSize()
            if len(batch) == max_events or (batch and size > max_bytes):
                break
            batch.append(event)
        return batch

    def written(self, event: runner_event_pb2.RunnerEvent) -> None:
        """`event` (each of what `next_batch` returned, in order) is on the wire."""
        now = self._clock()
        if self._queued and self._queued[0] is event:  # else it was dropped meanwhile
            self._written.append(_Written(now, self._queued.popleft()))
        self._prune(now)
        if not self._queued:
            self._empty.set()

    async def wait_empty(self) -> None:
        """Returns once every queued event has been written."""
        await self._empty.wait()

    async def wait(self, linger_s: float = 0.0) -> None:
        """Returns once something is queued; with `linger_s`, once an event of URGENT_KINDS
        is queued too, or `linger_s` after the first event was (what is queued then goes
        together)."""
        while not self._queued:
            self._ready.clear()
            await self._ready.wait()
        if linger_s <= 0:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(linger_s):
                while not self._urgent():
                    self._ready.clear()
                    await self._ready.wait()

    def _urgent(self) -> bool:
        return any(event.WhichOneof("kind") in URGENT_KINDS for event in self._queued)

    def rewind(self) -> None:
        """The stream broke: events written within the window go back in front of the queue."""
        self._prune(self._clock())
        self._queued.extendleft(reversed([w.event for w in self._written]))
        self._written.clear()
        if self._queued:
            self._ready.set()
            self._empty.clear()

    def drop(self, keys: set[WorkflowKey]) -> None:
        """Forgets every event of `keys` (the scheduler abandoned them)."""
        self._queued = deque(e for e in self._queued if (e.workflow_id, e.attempt) not in keys)
        self._written = deque(w for w in self._written if (w.event.workflow_id, w.event.attempt) not in keys)
        for key in keys:
            self._live.pop(key, None)
            self._forget_if_done(key)
        if not self._queued:
            self._empty.set()

    def finish(self, key: WorkflowKey) -> None:
        """`key` will emit nothing more: its counter goes once its last event has left."""
        self._finished.add(key)
        self._forget_if_done(key)

    def keys(self) -> set[WorkflowKey]:
        """Workflows with events not yet known to be delivered."""
        return set(self._live)

    def queued_count(self) -> int:
        return len(self._queued)

    def _prune(self, now: float) -> None:
        while self._written and now - self._written[0].at > self.window_s:
            event = self._written.popleft().event
            key = (event.workflow_id, event.attempt)
            self._live[key] -= 1
            if self._live[key] <= 0:
                del self._live[key]
                self._forget_if_done(key)

    def _forget_if_done(self, key: WorkflowKey) -> None:
        if key in self._finished and key not in self._live:
            self._finished.discard(key)
            self._seq.pop(key, None)
