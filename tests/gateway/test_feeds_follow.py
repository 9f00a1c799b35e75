"""`Feeds.follow`: a feed of its own (the fleet-wide stream's) over frames its route makes, with
the subscription, drops and keep-alives of the shared feeds."""

from __future__ import annotations

import asyncio

from services.gateway.feeds import IDLE, Feeds
from tests.gateway.test_feeds import ScriptedWatch, drain, render


class ScriptedFrames:
    """Frames fed by the test through a ScriptedWatch (put() a seq, or None to end them)."""

    def __init__(self) -> None:
        self.watch = ScriptedWatch()

    async def next(self) -> tuple[int, bytes] | None:
        message = await self.watch.next()
        return None if message is None else (message.event.seq, f"{message.event.seq}\n".encode())

    def cancel(self) -> None:
        self.watch.cancel()


async def test_its_subscriber_gets_every_frame_and_the_end() -> None:
    feeds = Feeds(render, capacity=3)
    source = ScriptedFrames()
    subscription = feeds.follow("a caller's events", source)
    assert feeds.watch_count() == 0, "not a WatchWorkflow stream"
    for seq in range(1, 8):  # more than `capacity` in all, read as they come
        source.watch.put(seq)
        await asyncio.sleep(0.01)
        assert await drain(subscription) == [seq]
    source.watch.put(8, None)
    await asyncio.sleep(0.01)
    assert await drain(subscription) == [8, None] and source.watch.cancelled
    await feeds.close()


async def test_a_subscriber_too_far_behind_is_dropped_and_its_source_stopped() -> None:
    feeds = Feeds(render, capacity=3)
    source = ScriptedFrames()
    subscription = feeds.follow("a caller's events", source)
    source.watch.put(1, 2, 3, 4)
    await asyncio.sleep(0.01)
    assert subscription.dropped
    assert await drain(subscription) == [1, 2, 3, None], "it ends after what it holds"
    subscription.cancel()
    await asyncio.sleep(0.01)
    assert source.watch.cancelled
    await feeds.close()


async def test_a_quiet_subscriber_gets_keepalives() -> None:
    feeds = Feeds(render, keepalive_seconds=0.05)
    source = ScriptedFrames()
    subscription = feeds.follow("a caller's events", source)
    assert await asyncio.wait_for(subscription.next(), 1) is IDLE
    subscription.cancel()
    await asyncio.sleep(0.01)
    assert source.watch.cancelled
    await feeds.close()
