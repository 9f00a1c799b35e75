"""Server-Sent Events: frame encoding, the keep-alive pump and a disconnect-aware response.

Frames use `\n` line endings (the SSE spec accepts `\n`, `\r\n` and `\r`):

    retry: 3000\n\n                                      once, first
    id: 7\nevent: progress\ndata: {"value": 3}\n\n       one per event
    : keepalive\n\n                                      when idle

`EventStreamResponse` ends the body iterator (and so whatever it was reading, such as a gRPC
call) as soon as the client disconnects, whatever the ASGI spec version of the server, and
drops a client that stops reading: when one write has waited `stall_seconds` for the socket
to drain (the kernel buffers and the server's are full), the response is abandoned and the
server closes the connection. The client resumes with Last-Event-ID.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar, cast

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Message, Receive, Scope, Send

log = logging.getLogger(__name__)

RETRY_MILLISECONDS = 3000
HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
# The same response headers for a bare ASGI `http.response.start` (subscribe_routes.py).
RAW_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-store"),
               (b"x-accel-buffering", b"no")]

T = TypeVar("T")


def frame(data: str, *, event: str | None = None, id: int | str | None = None) -> bytes:
    """One event frame; a multi-line `data` becomes several `data:` lines."""
    lines: list[str] = []
    if id is not None:
        lines.append(f"id: {_single_line(str(id))}")
    if event is not None:
        lines.append(f"event: {_single_line(event)}")
    lines.extend(f"data: {line}" for line in data.splitlines() or [""])
    return ("\n".join(lines) + "\n\n").encode("utf-8")


def json_frame(data: Any, *, event: str, id: int | str) -> bytes:
    """A frame whose data is compact JSON (one line: json.dumps never emits a raw newline)."""
    return frame(json.dumps(data, separators=(",", ":"), ensure_ascii=False), event=event, id=id)


def retry(milliseconds: int = RETRY_MILLISECONDS) -> bytes:
    """Tells the client how long to wait before reconnecting."""
    return f"retry: {milliseconds}\n\n".encode()


def comment(text: str) -> bytes:
    """A comment line: ignored by clients, keeps proxies from closing an idle stream."""
    return f": {_single_line(text)}\n\n".encode()


def _single_line(value: str) -> str:
    return value.replace("\r", " ").replace("\n", " ")


def transport_of(send: Send) -> asyncio.WriteTransport | None:
    """The connection's transport when the server shows it: uvicorn's ASGI `send` is a method
    of its request cycle, which holds it. ASGI has no message that closes a connection whose
    writes are blocked, so dropping a client that stopped reading needs it; None elsewhere."""
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    # uvloop's transports have asyncio's methods but do not subclass its classes
    return cast(asyncio.WriteTransport, transport) if callable(getattr(transport, "abort", None)) else None


async def with_keepalive(
    next_item: Callable[[], Awaitable[T | None]], interval: float
) -> AsyncGenerator[T | None, None]:
    """Yields each item from `next_item()` until it returns None, and a None in between
    whenever `interval` seconds pass without one (the caller writes a keep-alive then).

    The pending read is never lost to a timeout: it is awaited again after the keep-alive,
    and cancelled only when the consumer stops iterating.
    """
    pending: asyncio.Future[T | None] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(next_item())
            done, _ = await asyncio.wait({pending}, timeout=interval)
            if not done:
                yield None
                continue
            item = pending.result()
            pending = None
            if item is None:
                return
            yield item
    finally:
        if pending is not None and not pending.done():
            pending.cancel()


class EventStreamResponse(StreamingResponse):
    """A `text/event-stream` response that stops its iterator when the client goes away."""

    media_type = "text/event-stream"

    def __init__(
        self, content: AsyncIterator[bytes], headers: dict[str, str] | None = None,
        *, stall_seconds: float | None = None,
    ) -> None:
        super().__init__(content, headers={**HEADERS, **(headers or {})})
        self.stall_seconds = stall_seconds
        self.stalled = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        loop = asyncio.get_running_loop()
        sending_since: float | None = None  # when the write in progress began

        async def tracked_send(message: Message) -> None:
            nonlocal sending_since
            sending_since = loop.time()
            await send(message)
            sending_since = None

        async def until_disconnect_or_stall() -> None:
            # The stall is checked every stall/2 s here, not timed per write: one timer per
            # subscriber, not one per frame (a write that blocks is dropped after 1 to 1.5 x stall).
            stall = self.stall_seconds
            while True:
                with anyio.move_on_after(stall / 2 if stall else math.inf):
                    if (await receive())["type"] == "http.disconnect":
                        return
                    continue
                if stall and sending_since is not None and loop.time() - sending_since >= stall:
                    self.stalled = True
                    log.info("dropped an SSE client that read nothing for %.1f s", stall)
                    return

        async with anyio.create_task_group() as group:

            async def stream_then_stop() -> None:
                try:
                    await self.stream_response(tracked_send)
                except OSError:
                    pass  # the client went away while we were writing
                group.cancel_scope.cancel()

            group.start_soon(stream_then_stop)
            await until_disconnect_or_stall()
            group.cancel_scope.cancel()
        # A generator cancelled while suspended at a yield is not finalised by the
        # cancellation; close it now so it releases what it holds (the gRPC call).
        aclose = getattr(self.body_iterator, "aclose", None)
        if aclose is not None:
            await aclose()
