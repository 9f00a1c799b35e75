"""services.storage.put_items on its own: items stored concurrently and answered by id as each
ends, a refused or failing item answered alone while the stream goes on, at most MAX_IN_FLIGHT
at once, and a stream that ends when the service stops once what it read is answered."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from comfyfleet.storage.v1 import object_pb2, storage_service_pb2

from services.common.errors import InvalidArgument, from_status_bytes
from services.storage import put_items
from services.storage.put_items import serve_items

pytestmark = pytest.mark.timeout(10)

Item = storage_service_pb2.PutObjectsBytesRequest


def item(n: int, key: str | None = None) -> Item:
    return Item(id=n, put=storage_service_pb2.PutObjectBytesRequest(
        header=storage_service_pb2.PutObjectHeader(key=key or f"k{n}"), data=b"x" * n))


class Store:
    """A put that waits for the test to release each key."""

    def __init__(self) -> None:
        self.release: dict[str, asyncio.Event] = {}
        self.running = 0
        self.most = 0
        self.called: list[str] = []

    async def put(self, request: storage_service_pb2.PutObjectBytesRequest) -> object_pb2.ObjectRef:
        key = request.header.key
        self.called.append(key)
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await self.release.setdefault(key, asyncio.Event()).wait()
        finally:
            self.running -= 1
        if key == "bad":
            raise InvalidArgument("a bad key", reason="INVALID_KEY")
        if key == "bug":
            raise RuntimeError("a bug")
        return object_pb2.ObjectRef(key=key, size_bytes=len(request.data))

    def let(self, *keys: str) -> None:
        for key in keys:
            self.release.setdefault(key, asyncio.Event()).set()


async def sent(items: asyncio.Queue[Item | None]) -> AsyncIterator[Item]:
    while (next_item := await items.get()) is not None:
        yield next_item


async def test_items_are_answered_by_id_as_each_ends_and_a_refused_one_alone() -> None:
    store, items, stopping = Store(), asyncio.Queue[Item | None](), asyncio.Event()
    answers = serve_items(sent(items), store.put, stopping)
    for n, key in ((1, "k1"), (2, "bad"), (3, "bug"), (4, "k4")):
        items.put_nowait(item(n, key))
    store.let("k4")
    first = await anext(answers)
    assert (first.id, first.object.key) == (4, "k4")  # the last sent, done first
    store.let("bad", "bug", "k1")
    rest = {a.id: a for a in [await anext(answers) for _ in range(3)]}
    assert rest[1].object.size_bytes == 1
    assert from_status_bytes(rest[2].error_status).reason == "INVALID_KEY"
    assert from_status_bytes(rest[3].error_status).reason == "INTERNAL"
    items.put_nowait(item(5))  # the stream goes on
    store.let("k5")
    assert (await anext(answers)).id == 5
    items.put_nowait(None)  # the client closes its side: the stream ends
    with pytest.raises(StopAsyncIteration):
        await anext(answers)


async def test_at_most_max_in_flight_run_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(put_items, "MAX_IN_FLIGHT", 3)
    store, items, stopping = Store(), asyncio.Queue[Item | None](), asyncio.Event()
    answers = serve_items(sent(items), store.put, stopping)
    for n in range(1, 8):
        items.put_nowait(item(n))
    items.put_nowait(None)
    waiting = asyncio.ensure_future(anext(answers))
    await asyncio.sleep(0.05)
    assert store.running == 3
    store.let(*(f"k{n}" for n in range(1, 8)))
    got = [(await waiting).id] + [a.id async for a in answers]
    assert sorted(got) == list(range(1, 8))
    assert store.most == 3


async def test_stopping_ends_the_stream_once_the_items_read_are_answered() -> None:
    store, items, stopping = Store(), asyncio.Queue[Item | None](), asyncio.Event()
    answers = serve_items(sent(items), store.put, stopping)
    items.put_nowait(item(1))
    first = asyncio.ensure_future(anext(answers))
    await asyncio.sleep(0.02)
    stopping.set()
    await asyncio.sleep(0.02)
    items.put_nowait(item(2))  # sent after: never read
    store.let("k1", "k2")
    assert (await first).id == 1
    with pytest.raises(StopAsyncIteration):
        await anext(answers)
    assert store.called == ["k1"]
