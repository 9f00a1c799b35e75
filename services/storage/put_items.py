"""PutObjectsBytes: the items of one long-lived stream, each stored as PutObjectBytes would
store it, concurrently, and answered by id as each ends (storage_service.proto).

An item's own failure (a domain error: a bad key, a conflict, too large) is its answer, with
the google.rpc.Status its own call would have ended with; anything else is logged and answered
as INTERNAL. The stream ends after the client closes its side, or once `stopping` is set (the service is
stopping: no more items are read), when every item read is answered; the client opens another
one for its next put. If reading breaks, the items still running are cancelled (their client
will put them again).
At most MAX_IN_FLIGHT items run at once: then reading waits, and gRPC flow control holds the
client back. Each item logs its own line, as its call would have (`log_item`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from comfyfleet.storage.v1 import object_pb2, storage_service_pb2

from services.common.errors import ComfyfleetError, status_proto_for
from services.common.grpc_telemetry import log_item

log = logging.getLogger(__name__)

METHOD = "/comfyfleet.storage.v1.StorageService/PutObjectsBytes"
MAX_IN_FLIGHT = 16

Put = Callable[[storage_service_pb2.PutObjectBytesRequest], Awaitable[object_pb2.ObjectRef]]
Response = storage_service_pb2.PutObjectsBytesResponse


async def serve_items(
    requests: AsyncIterator[storage_service_pb2.PutObjectsBytesRequest], put: Put, stopping: asyncio.Event,
    request_id: str = "",
) -> AsyncIterator[Response]:
    """The answers to the items of `requests`, as each one ends."""
    answers: asyncio.Queue[Response | None] = asyncio.Queue()
    running: set[asyncio.Task[None]] = set()

    async def one(item: storage_service_pb2.PutObjectsBytesRequest) -> None:
        started = time.perf_counter()
        error: BaseException | None = None
        try:
            answer = Response(id=item.id, object=await put(item.put))
        except ComfyfleetError as err:
            error = err
            answer = Response(id=item.id, error_status=status_proto_for(err).SerializeToString())
        except Exception as err:  # a bug: the item fails as its call would (INTERNAL), the stream goes on
            log.exception("put of %s failed", item.put.header.key)
            error = err
            internal = ComfyfleetError(f"storing {item.put.header.key!r} failed")
            answer = Response(id=item.id, error_status=status_proto_for(internal).SerializeToString())
        log_item(METHOD, error, time.perf_counter() - started, request_id=request_id)
        answers.put_nowait(answer)

    async def read() -> None:
        try:
            stop = asyncio.ensure_future(stopping.wait())
            while True:
                following = asyncio.ensure_future(anext(requests, None))
                await asyncio.wait({following, stop}, return_when=asyncio.FIRST_COMPLETED)
                if not following.done():
                    following.cancel()
                    break  # stopping: the items read so far are answered, then the stream ends
                item = following.result()
                if item is None:
                    break
                if len(running) >= MAX_IN_FLIGHT:
                    await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                task = asyncio.create_task(one(item), name=f"put {item.put.header.key}")
                running.add(task)
                task.add_done_callback(running.discard)
            stop.cancel()
            if running:
                await asyncio.wait(running)
        finally:
            answers.put_nowait(None)

    reader = asyncio.create_task(read(), name="put items reader")
    try:
        while (answer := await answers.get()) is not None:
            yield answer
        await reader  # raises what broke the reading, if anything did
    finally:
        reader.cancel()
        for task in list(running):
            task.cancel()
