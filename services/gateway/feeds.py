"""Fan-out inside one gateway process: one WatchWorkflow stream per watched workflow, shared
by every SSE subscriber of that workflow here, each with a bounded queue of rendered frames.

    scheduler --WatchWorkflow--> Feed (one per workflow) --frames--> Subscription x N --> SSE

A feed is opened with the first subscriber's watch, once the seq it starts after is known
(the snapshot's, or the subscriber's Last-Event-ID). It keeps the last `history` frames, so a
later subscriber whose cursor falls inside what the feed holds joins it and gets the frames
after its cursor, then live ones: no gap, nothing twice. A cursor older than that (an old
Last-Event-ID) gets a feed of its own that is not shared. Each event is rendered (its output
URLs presigned) once per feed, not once per subscriber.

The feed never waits for a subscriber: a subscription whose queue is full is dropped (its
stream ends after what it holds; the client resumes with Last-Event-ID from the stored log),
so a slow reader cannot slow anyone else. A feed ends when the scheduler ends the watch
(after the terminal status, or on an error) or when its last subscriber leaves.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections import deque
from collections.abc import Awaitable, Callable

from services.common.errors import ComfyfleetError
from services.gateway.scheduler_client import WatchMessage, WorkflowWatch

log = logging.getLogger(__name__)

Render = Callable[[WatchMessage], Awaitable[bytes | None]]


class Idle(enum.Enum):
    IDLE = "idle"


IDLE = Idle.IDLE  # from `Subscription.next()`: nothing for a keep-alive interval


class Subscription:
    """One subscriber's bounded queue of SSE frames; `next()` gives IDLE when the feeds'
    keep-alive tick found it quiet, and None when it ends."""

    __slots__ = ("_feed", "_queue", "_quiet", "capacity", "cursor", "dropped", "ended")

    def __init__(self, feed: Feed, cursor: int, capacity: int) -> None:
        self._feed = feed
        self._queue: asyncio.Queue[bytes | Idle | None] = asyncio.Queue(capacity + 1)
        self._quiet = False
        self.capacity = capacity
        self.cursor = cursor  # seq of the last frame queued (or already known to the client)
        self.dropped = False
        self.ended = False

    def offer(self, seq: int, frame: bytes) -> None:
        if self.ended or seq <= self.cursor:
            return
        if self._queue.qsize() >= self.capacity:
            self.dropped = True
            self.end()
            return
        self._queue.put_nowait(frame)
        self.cursor = seq
        self._quiet = False

    def tick(self) -> None:
        """A keep-alive tick: IDLE for a subscriber that got nothing since the last one."""
        if self._quiet and not self.ended and self._queue.qsize() < self.capacity:
            self._queue.put_nowait(IDLE)
        self._quiet = True

    def end(self) -> None:
        if not self.ended:
            self.ended = True
            self._queue.put_nowait(None)

    async def next(self) -> bytes | Idle | None:
        """The next frame, IDLE (write a keep-alive), or None at the end. One queue wait, no
        timer: keep-alives come from one tick for all subscriptions (`Feeds`)."""
        return await self._queue.get()

    def cancel(self) -> None:
        """The subscriber went away."""
        self.end()
        self._feed.leave(self)


class Feed:
    """One watch of one workflow, fanned out to its subscriptions."""

    def __init__(self, workflow_id: str, watch: WorkflowWatch, start: int, render: Render,
                 history: int, on_end: Callable[[Feed], None]) -> None:
        self.workflow_id = workflow_id
        self._watch = watch
        self._render = render
        self._on_end = on_end
        self.start = start  # the feed has every event after this seq
        self.recent: deque[tuple[int, bytes]] = deque(maxlen=history)
        self.subscriptions: set[Subscription] = set()
        self.ended = False
        self._task: asyncio.Task[None] | None = None

    def covers(self, cursor: int) -> bool:
        """Whether a subscriber at `cursor` can join without missing an event."""
        if self.ended:
            return False
        full = self.recent.maxlen is not None and len(self.recent) == self.recent.maxlen
        low = self.recent[0][0] - 1 if full else self.start
        return cursor >= low

    def attach(self, cursor: int, capacity: int) -> Subscription:
        subscription = Subscription(self, cursor, capacity)
        for seq, frame in self.recent:
            subscription.offer(seq, frame)
        self.subscriptions.add(subscription)
        return subscription

    def run(self) -> None:
        self._task = asyncio.create_task(self._pump(), name=f"feed {self.workflow_id}")

    def leave(self, subscription: Subscription) -> None:
        self.subscriptions.discard(subscription)
        if not self.subscriptions and not self.ended:
            self._finish()
            if self._task is not None:
                self._task.cancel()

    async def stop(self) -> None:
        self._finish()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _pump(self) -> None:
        try:
            while True:
                message = await self._watch.next()
                if message is None:
                    return
                frame = await self._render(message)
                if frame is None or message.WhichOneof("message") != "event":
                    continue
                seq = message.event.seq
                self.recent.append((seq, frame))
                for subscription in list(self.subscriptions):
                    subscription.offer(seq, frame)
        except ComfyfleetError as err:
            log.info("watch of workflow %s ended: %s (%s)", self.workflow_id, err.message, err.reason)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("watch of workflow %s failed", self.workflow_id)
        finally:
            self._watch.cancel()
            self._finish()

    def _finish(self) -> None:
        if self.ended:
            return
        self.ended = True
        for subscription in list(self.subscriptions):
            subscription.end()
        self._on_end(self)


class Feeds:
    """The shared feeds of this gateway process, by workflow id; owns their tasks."""

    def __init__(self, render: Render, *, history: int = 128, capacity: int = 256,
                 keepalive_seconds: float = 15.0) -> None:
        self._render = render
        self.history = history
        self.capacity = capacity
        self.keepalive_seconds = keepalive_seconds
        self._shared: dict[str, Feed] = {}
        self._all: set[Feed] = set()
        self._ticker: asyncio.Task[None] | None = None

    def has(self, workflow_id: str) -> bool:
        feed = self._shared.get(workflow_id)
        return feed is not None and not feed.ended

    def join(self, workflow_id: str, cursor: int) -> Subscription | None:
        """A subscription to the shared feed of `workflow_id` from `cursor`, if one covers it."""
        feed = self._shared.get(workflow_id)
        if feed is None or not feed.covers(cursor):
            return None
        return feed.attach(cursor, self.capacity)

    def open(self, workflow_id: str, watch: WorkflowWatch, start: int) -> Subscription:
        """A new feed over `watch` (which yields the events after `start`), with its first
        subscription. It is shared unless another feed of that workflow is running."""
        feed = Feed(workflow_id, watch, start, self._render, self.history, self._ended)
        if not self.has(workflow_id):
            self._shared[workflow_id] = feed
        self._all.add(feed)
        subscription = feed.attach(start, self.capacity)
        feed.run()
        if self._ticker is None:
            self._ticker = asyncio.create_task(self._tick(), name="sse keep-alive tick")
        return subscription

    def subscriber_count(self, workflow_id: str) -> int:
        return sum(len(f.subscriptions) for f in self._all if f.workflow_id == workflow_id)

    def watch_count(self) -> int:
        return len(self._all)

    async def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)
        await asyncio.gather(*(feed.stop() for feed in list(self._all)))

    async def _tick(self) -> None:
        """Every `keepalive_seconds`: a keep-alive for each subscription that was quiet since
        the previous tick (so an idle stream gets one every one to two intervals)."""
        while True:
            await asyncio.sleep(self.keepalive_seconds)
            for feed in list(self._all):
                for subscription in list(feed.subscriptions):
                    subscription.tick()

    def _ended(self, feed: Feed) -> None:
        self._all.discard(feed)
        if self._shared.get(feed.workflow_id) is feed:
            del self._shared[feed.workflow_id]
