"""services.runner.storage_stream.PutItems over a scripted stream: a broken stream fails only
its own waiting items and the next put opens another; close() fails what still waits; an
answer comes back to its own put whatever the order."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from comfyfleet.storage.v1 import object_pb2, storage_service_pb2

from services.runner.storage_stream import PutItems, StreamBroken

pytestmark = pytest.mark.timeout(10)


class Call:
    """A PutObjectsBytes call the test answers: `answer(id)`, `fail(code)`."""

    def __init__(self) -> None:
        self.written: list[storage_service_pb2.PutObjectsBytesRequest] = []
        self.inbox: asyncio.Queue[Any] = asyncio.Queue()
        self.cancelled = False

    async def write(self, message: storage_service_pb2.PutObjectsBytesRequest) -> None:
        self.written.append(message)

    async def read(self) -> Any:
        item = await self.inbox.get()
        if isinstance(item, grpc.aio.AioRpcError):
            raise item
        return item

    def done(self) -> bool:
        return self.cancelled

    def cancel(self) -> None:
        self.cancelled = True

    def answer(self, n: int) -> None:
        key = self.written[n].put.header.key
        self.inbox.put_nowait(storage_service_pb2.PutObjectsBytesResponse(
            id=self.written[n].id, object=object_pb2.ObjectRef(key=key)))

    def fail(self, code: grpc.StatusCode) -> None:
        self.inbox.put_nowait(grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), "broken"))


class Stub:
    def __init__(self) -> None:
        self.calls: list[Call] = []

    def PutObjectsBytes(self) -> Call:
        self.calls.append(Call())
        return self.calls[-1]


def request(key: str) -> storage_service_pb2.PutObjectBytesRequest:
    return storage_service_pb2.PutObjectBytesRequest(header=storage_service_pb2.PutObjectHeader(key=key), data=b"x")


async def written(stub: Stub, call: int, n: int) -> Call:
    """Call number `call` of `stub`, once `n` items were written on it."""
    for _ in range(100):
        if len(stub.calls) > call and len(stub.calls[call].written) >= n:
            return stub.calls[call]
        await asyncio.sleep(0)
    raise AssertionError(f"{n} items were not written on call {call}")


async def test_answers_go_to_their_own_puts_whatever_the_order() -> None:
    stub = Stub()
    items = PutItems(stub)  # type: ignore[arg-type]
    puts = [asyncio.ensure_future(items.put(request(k))) for k in ("a", "b", "c")]
    await written(stub, 0, 3)
    for n in (2, 0, 1):
        stub.calls[0].answer(n)
    assert [(await p).key for p in puts] == ["a", "b", "c"]
    assert len(stub.calls) == 1
    await items.close()


async def test_a_broken_stream_fails_its_own_items_only_and_the_next_put_opens_another() -> None:
    stub = Stub()
    items = PutItems(stub)  # type: ignore[arg-type]
    first = asyncio.ensure_future(items.put(request("a")))
    await written(stub, 0, 1)
    stub.calls[0].fail(grpc.StatusCode.UNAVAILABLE)
    with pytest.raises(StreamBroken) as broken:
        await first
    assert broken.value.error.code() == grpc.StatusCode.UNAVAILABLE
    assert items.available
    second = asyncio.ensure_future(items.put(request("b")))
    await written(stub, 1, 1)
    stub.calls[1].answer(0)
    assert (await second).key == "b"
    await items.close()


async def test_unimplemented_turns_the_stream_off() -> None:
    stub = Stub()
    items = PutItems(stub)  # type: ignore[arg-type]
    put = asyncio.ensure_future(items.put(request("a")))
    await written(stub, 0, 1)
    stub.calls[0].fail(grpc.StatusCode.UNIMPLEMENTED)
    with pytest.raises(StreamBroken):
        await put
    assert not items.available
    await items.close()


async def test_close_fails_the_puts_still_waiting() -> None:
    stub = Stub()
    items = PutItems(stub)  # type: ignore[arg-type]
    put = asyncio.ensure_future(items.put(request("a")))
    await written(stub, 0, 1)
    await items.close()
    with pytest.raises(StreamBroken) as broken:
        await put
    assert broken.value.error.code() == grpc.StatusCode.CANCELLED
    assert stub.calls[0].cancelled
