"""Fan-out inside one gateway process: one WatchWorkflow stream per watched workflow, shared
by every SSE subscriber of that workflow here, each reading the feed's frames at its own pace.

    scheduler --WatchWorkflow--> Feed (one per workflow) --frames--> Subscription x N --> SSE

A feed renders each event once (its output URLs presigned) into the bytes of one SSE frame and
appends it to a ring it shares with its subscribers; a subscription is only a position in that
ring, so a frame is encoded and stored once per feed, never copied per subscriber. Publishing
wakes each waiting subscription (one future each, nothing else per frame), and a subscription
that wakes takes every frame after its position at once (one write for several frames).

A feed is opened with the first subscriber's watch, once the seq it starts after is known
(the snapshot's, or the subscriber's Last-Event-ID). A later subscriber whose cursor falls
inside the feed's last `history` frames joins it and gets the frames after its cursor, then
live ones: no gap, nothing twice. A cursor older than that (an old Last-Event-ID) gets a feed
of its own that is not shared.

The feed never waits for a subscriber: a subscription that falls more than `capacity` frames
behind is dropped (it ends after those `capacity` frames; the client resumes with
Last-Event-ID from the stored log), and one whose write has been blocked for `stall_seconds`
is dropped by `Feeds`' stall check (through `on_stall`, which closes its connection), so a
slow reader cannot slow anyone else. Keep-alives come from one timer for all subscriptions
(`Feeds`), not one per connection. A feed ends when the scheduler ends the watch (after the
terminal status, or on an error) or when its last subscriber leaves.

The fleet-wide stream (GET /v1/events, events_routes.py) has one WatchEvents stream per
subscriber, so its feed is not shared (`Feeds.follow`): the same subscription, timers and
drops, over frames the route makes itself; such a feed holds only the frames its one
subscriber has not read yet.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Protocol

from comfyfleet.scheduler.v1.workflow_pb2 import WorkflowEvent

from services.common.errors import ComfyfleetError
from services.gateway.scheduler_client import WorkflowWatch

log = logging.getLogger(__name__)

Render = Callable[[WorkflowEvent], Awaitable[bytes | None]]  # one event's SSE frame; None: not shown


class Frames(Protocol):
    """What a feed publishes: `next()` gives (seq, frame) in seq order, None at the end;
    `cancel()` stops the stream it reads."""

    async def next(self) -> tuple[int, bytes] | None: ...
    def cancel(self) -> None: ...


class Idle(enum.Enum):
    IDLE = "idle"


IDLE = Idle.IDLE  # from `Subscription.next()`: nothing for a keep-alive interval


class Subscription:
    """One subscriber's position in its feed's frames. `next()` gives the frames after it
    (several at once, joined), IDLE when the keep-alive tick found it quiet, and None when it
    ends. The connection serving it sets `writing_since` while a write is in progress and
    `on_stall` to drop the client (see `Feeds`)."""

    __slots__ = ("_feed", "_held", "_waiter", "capacity", "dropped", "ended", "gone", "keepalive_due",
                 "on_stall", "position", "quiet", "stalled", "writing_since")

    def __init__(self, feed: Feed, position: int, capacity: int) -> None:
        self._feed = feed
        self._held: bytes | None = None  # what a dropped subscription still gets
        self._waiter: asyncio.Future[None] | None = None
        self.capacity = capacity
        self.position = position  # index (in feed.published order) of the next frame to read
        self.dropped = False  # fell more than `capacity` frames behind
        self.stalled = False  # a write was blocked for the stall limit
        self.ended = False
        self.gone = False  # the subscriber went away: nothing more is read
        self.quiet = False
        self.keepalive_due = False
        self.writing_since: float | None = None  # loop.time() when the write in progress began
        self.on_stall: Callable[[], object] | None = None

    def publish(self, published: int) -> None:
        """The feed now holds `published` frames: wake, or drop when too far behind."""
        if self.ended:
            return
        if published - self.position > self.capacity:
            self._held = self._feed.frames(self.position, self.position + self.capacity)
            self.position += self.capacity
            self.dropped = True
            self.end()
            return
        self.quiet = False
        self._wake()

    def tick(self) -> None:
        """A keep-alive tick: IDLE for a subscription that got nothing since the last one."""
        if self.quiet and not self.ended:
            self.keepalive_due = True
            self._wake()
        self.quiet = True

    def stall(self) -> None:
        """Its write has been blocked too long: drop the client."""
        if self.ended:
            return
        self.stalled = True
        self.end()
        if self.on_stall is not None:
            self.on_stall()

    def end(self) -> None:
        if not self.ended:
            self.ended = True
            self._wake()

    def take(self) -> bytes:
        """The frames after this subscription's position, joined (b"" if none); moves past them."""
        if self._held is not None:
            held, self._held = self._held, None
            return held
        if self.gone or self.dropped:
            return b""
        feed = self._feed
        if feed.published == self.position:
            return b""
        frames = feed.frames(self.position, feed.published)
        self.position = feed.published
        self.keepalive_due = False
        feed.read_up()
        return frames

    async def next(self) -> bytes | Idle | None:
        """The next frames, IDLE (write a keep-alive), or None at the end. One future per wait,
        no timer: keep-alives come from one tick for all subscriptions (`Feeds`)."""
        while True:
            if self.gone:
                return None
            frames = self.take()
            if frames:
                return frames
            if self.ended:
                return None
            if self.keepalive_due:
                self.keepalive_due = False
                return IDLE
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def cancel(self) -> None:
        """The subscriber went away (or stopped reading): nothing more is read, the feed lets go."""
        self.gone = True
        self.end()
        self._feed.leave(self)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class _WorkflowFrames:
    """The frames of a WatchWorkflow stream: one per event it renders (the seq is the event's).
    A message of several events (`batch`) is rendered whole before its first frame is given,
    so the feed publishes them together and a subscriber takes them in one write."""

    def __init__(self, watch: WorkflowWatch, render: Render) -> None:
        self._watch = watch
        self._render = render
        self._ready: deque[tuple[int, bytes]] = deque()

    async def next(self) -> tuple[int, bytes] | None:
        while not self._ready:
            message = await self._watch.next()
            if message is None:
                return None
            kind = message.WhichOneof("message")
            events = message.events.events if kind == "events" else [message.event] if kind == "event" else []
            for event in events:
                if (frame := await self._render(event)) is not None:
                    self._ready.append((event.seq, frame))
        return self._ready.popleft()

    def cancel(self) -> None:
        self._watch.cancel()


class Feed:
    """One stream of frames (a watch of one workflow, unless `workflow_id` is None: a feed of
    its own, not shared), fanned out to its subscriptions. `history` 0: nobody joins later."""

    def __init__(self, name: str, source: Frames, start: int, history: int, keep: int,
                 on_end: Callable[[Feed], None], workflow_id: str | None = None) -> None:
        self.name = name  # for the logs
        self.workflow_id = workflow_id
        self._source = source
        self._on_end = on_end
        self.start = start  # the feed has every event after this seq
        self.history = history
        # The last frames as (seq, frame): `history` for joiners, and the `keep` + 1 that a
        # subscription about to be dropped for falling `keep` frames behind still gets.
        self.recent: deque[tuple[int, bytes]] = deque(maxlen=max(history, keep + 1))
        self.published = 0  # frames appended so far; recent[-1] is frame published - 1
        self.subscriptions: set[Subscription] = set()
        self.ended = False
        self._task: asyncio.Task[None] | None = None

    def covers(self, cursor: int) -> bool:
        """Whether a subscriber at `cursor` can join without missing an event."""
        if self.ended:
            return False
        if self.published >= self.history:
            return cursor >= self.recent[-self.history][0] - 1
        return cursor >= self.start

    def frames(self, begin: int, end: int) -> bytes:
        """Frames `begin` up to `end` (in published order) joined; they must still be held."""
        recent = self.recent
        if end - begin == 1:
            return recent[begin - self.published][1]
        return b"".join(recent[i][1] for i in range(begin - self.published, end - self.published))

    def read_up(self) -> None:
        """A subscription read every frame: a feed that nobody joins (history 0) lets them go."""
        if not self.history:
            self.recent.clear()

    def attach(self, cursor: int, capacity: int) -> Subscription:
        after = sum(1 for seq, _ in list(self.recent)[-self.history:] if seq > cursor)
        subscription = Subscription(self, self.published - after, capacity)
        subscription.publish(self.published)
        self.subscriptions.add(subscription)
        return subscription

    def run(self) -> None:
        self._task = asyncio.create_task(self._pump(), name=f"feed of {self.name}")

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
            while (item := await self._source.next()) is not None:
                self.recent.append(item)
                self.published += 1
                published = self.published
                for subscription in self.subscriptions:
                    subscription.publish(published)
        except ComfyfleetError as err:
            log.info("watch of %s ended: %s (%s)", self.name, err.message, err.reason)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("watch of %s failed", self.name)
        finally:
            self._source.cancel()
            self._finish()

    def _finish(self) -> None:
        if self.ended:
            return
        self.ended = True
        self._source.cancel()  # here too: a pump task cancelled before it ran never reaches its finally
        for subscription in list(self.subscriptions):
            subscription.end()
        self._on_end(self)


class Feeds:
    """The shared feeds of this gateway process, by workflow id; owns their tasks and the two
    timers of all their subscriptions: the keep-alive tick and the stall check."""

    def __init__(self, render: Render, *, history: int = 128, capacity: int = 256,
                 keepalive_seconds: float = 15.0, stall_seconds: float | None = None) -> None:
        self._render = render
        self.history = history
        self.capacity = capacity
        self.keepalive_seconds = keepalive_seconds
        self.stall_seconds = stall_seconds
        self._shared: dict[str, Feed] = {}
        self._all: set[Feed] = set()
        self._timers: list[asyncio.Task[None]] = []

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
        feed = Feed(f"workflow {workflow_id}", _WorkflowFrames(watch, self._render), start, self.history,
                    self.capacity, self._ended, workflow_id)
        if not self.has(workflow_id):
            self._shared[workflow_id] = feed
        return self._run(feed, start)

    def follow(self, name: str, source: Frames) -> Subscription:
        """A feed of its own over `source` (not shared: nobody joins it), with its subscription."""
        return self._run(Feed(name, source, 0, 0, self.capacity, self._ended), 0)

    def _run(self, feed: Feed, start: int) -> Subscription:
        self._all.add(feed)
        subscription = feed.attach(start, self.capacity)
        feed.run()
        if not self._timers:
            self._timers.append(asyncio.create_task(self._tick(), name="sse keep-alive tick"))
            if self.stall_seconds is not None:
                self._timers.append(asyncio.create_task(self._check_stalls(self.stall_seconds),
                                                        name="sse stall check"))
        return subscription

    def subscriber_count(self, workflow_id: str) -> int:
        return sum(len(f.subscriptions) for f in self._all if f.workflow_id == workflow_id)

    def watch_count(self) -> int:
        """The WatchWorkflow streams held open (the feeds of workflows)."""
        return sum(1 for feed in self._all if feed.workflow_id is not None)

    async def close(self) -> None:
        for timer in self._timers:
            timer.cancel()
        await asyncio.gather(*self._timers, return_exceptions=True)
        await asyncio.gather(*(feed.stop() for feed in list(self._all)))

    async def _tick(self) -> None:
        """Every `keepalive_seconds`: a keep-alive for each subscription that was quiet since
        the previous tick (so an idle stream gets one every one to two intervals)."""
        while True:
            await asyncio.sleep(self.keepalive_seconds)
            for feed in list(self._all):
                for subscription in list(feed.subscriptions):
                    subscription.tick()

    async def _check_stalls(self, stall: float) -> None:
        """Every stall/2 s: drops each subscription whose write in progress began `stall` s ago
        or more (so a write that blocks is dropped after 1 to 1.5 x stall)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(stall / 2)
            now = loop.time()
            for feed in list(self._all):
                for subscription in list(feed.subscriptions):
                    since = subscription.writing_since
                    if since is not None and now - since >= stall:
                        log.info("dropped an SSE client that read nothing for %.1f s", now - since)
                        subscription.stall()

    def _ended(self, feed: Feed) -> None:
        self._all.discard(feed)
        if feed.workflow_id is not None and self._shared.get(feed.workflow_id) is feed:
            del self._shared[feed.workflow_id]
