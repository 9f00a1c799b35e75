"""services.gateway.feeds on its own: a scripted watch, frames rendered as their seq."""

from __future__ import annotations

import asyncio
from typing import cast

from comfyfleet.scheduler.v1 import workflow_pb2, workflow_service_pb2

from services.gateway.feeds import IDLE, Feeds, Subscription

WF = "wf-1"
Watch = workflow_service_pb2.WatchWorkflowResponse


class ScriptedWatch:
    """A WorkflowWatch fed by the test: put() a seq, or None to end it."""

    def __init__(self) -> None:
        self.items: asyncio.Queue[int | None] = asyncio.Queue()
        self.cancelled = False

    def put(self, *seqs: int | None) -> None:
        for seq in seqs:
            self.items.put_nowait(seq)

    async def next(self) -> Watch | None:
        seq = await self.items.get()
        return None if seq is None else Watch(event=workflow_pb2.WorkflowEvent(workflow_id=WF, seq=seq))

    def cancel(self) -> None:
        self.cancelled = True


async def render(event: workflow_pb2.WorkflowEvent) -> bytes | None:
    return f"{event.seq}\n".encode()


async def drain(subscription: Subscription, idle: float = 0.05) -> list[int | None]:
    """The seqs waiting for `subscription`, then None if it ended (else it went idle)."""
    got: list[int | None] = []
    while True:
        try:
            frames = await asyncio.wait_for(subscription.next(), idle)
        except TimeoutError:
            return got
        assert frames is not IDLE
        if frames is None:
            return [*got, None]
        got += [int(line) for line in frames.splitlines()]  # several frames come at once


async def test_a_full_queue_drops_only_that_subscriber() -> None:
    feeds = Feeds(render, history=8, capacity=3)
    watch = ScriptedWatch()
    slow = feeds.open(WF, watch, start=0)
    fast = feeds.join(WF, 0)
    assert fast is not None
    for seq in range(1, 4):
        watch.put(seq)
        await asyncio.sleep(0.01)
        assert await drain(fast) == [seq]
    watch.put(4)  # the slow one already holds 3: one more and it is dropped
    await asyncio.sleep(0.01)
    assert slow.dropped and not fast.dropped
    assert await drain(slow) == [1, 2, 3, None], "the dropped subscription ends after what it holds"
    assert await drain(fast) == [4]
    watch.put(5, None)
    await asyncio.sleep(0.01)
    assert await drain(fast) == [5, None] and watch.cancelled
    assert not feeds.has(WF) and feeds.watch_count() == 0
    await feeds.close()


async def test_keepalives_go_only_to_subscriptions_that_were_quiet_for_a_tick() -> None:
    feeds = Feeds(render, keepalive_seconds=0.05)
    watch = ScriptedWatch()
    first = feeds.open(WF, watch, start=0)
    busy = feeds.join(WF, 0)
    assert busy is not None
    got: list[object] = []

    async def read() -> None:
        while (item := await busy.next()) is not None:
            got.append(item)

    reader = asyncio.create_task(read())
    for seq in range(1, 9):  # an event every 0.02 s for 0.16 s: about three ticks
        watch.put(seq)
        await asyncio.sleep(0.02)
    reader.cancel()
    assert IDLE not in got, "no keep-alive between frames"
    assert b"".join(cast(list[bytes], got)) == b"".join(f"{n}\n".encode() for n in range(1, 9))
    first.cancel()
    lonely = feeds.join(WF, 8)
    assert lonely is not None
    assert await asyncio.wait_for(lonely.next(), 1) is IDLE
    await feeds.close()


async def test_joining_replays_what_the_feed_holds_after_the_cursor_and_refuses_older() -> None:
    feeds = Feeds(render, history=4, capacity=100)
    watch = ScriptedWatch()
    first = feeds.open(WF, watch, start=2)  # a resumed watch: events after seq 2
    watch.put(3, 4, 5, 6, 7)
    await asyncio.sleep(0.01)
    assert feeds.join(WF, 2) is None, "the feed no longer holds 3 (it keeps 4 frames: 4..7)"
    late = feeds.join(WF, 5)
    assert late is not None and await drain(late) == [6, 7]
    assert await drain(first) == [3, 4, 5, 6, 7]
    late.cancel()
    first.cancel()
    await asyncio.sleep(0.01)
    assert watch.cancelled and not feeds.has(WF), "the last subscriber leaving stops the watch"
    await feeds.close()


class BatchedWatch(ScriptedWatch):
    """A ScriptedWatch whose messages carry several events (WatchWorkflowRequest.batch):
    put() a list of seqs per message."""

    async def next(self) -> Watch | None:
        seqs = await self.items.get()
        if seqs is None:
            return None
        return Watch(events=workflow_service_pb2.WorkflowEvents(
            events=[workflow_pb2.WorkflowEvent(workflow_id=WF, seq=seq) for seq in cast(list[int], seqs)]))


async def test_the_events_of_one_message_reach_a_subscriber_in_one_write() -> None:
    feeds = Feeds(render)
    watch = BatchedWatch()
    subscription = feeds.open(WF, watch, start=0)
    watch.put(cast(int, [1, 2, 3]))
    assert await subscription.next() == b"1\n2\n3\n"  # the three frames joined: one write
    watch.put(cast(int, [4]), None)
    assert await drain(subscription) == [4, None]
    await feeds.close()
