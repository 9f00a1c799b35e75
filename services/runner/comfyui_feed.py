"""The runner's one websocket to ComfyUI, demultiplexed by prompt id.

`ComfyUIFeed.run` keeps `/ws?clientId=<runner client id>` open: it reconnects with capped
exponential backoff and jitter, with the same clientId, for as long as the runner lives.
Each execution subscribes an inbox (an `asyncio.Queue`) for its prompt id before it submits
the prompt, and receives:

    WsMessage(message, at)   a message of its prompt (only the types in ROUTED_TYPES)
    QueueStatus(remaining)   every `status` broadcast (the queue changed)
    FeedDown()               the socket closed; messages may be lost until FeedUp
    FeedUp()                 the socket is back; reconcile with /queue and /history

Messages of prompts nobody subscribed (other clients, finished prompts) are dropped, and
messages of other types are never parsed (the client drops them by their leading `type`).
`generation` counts the times the socket opened; `wait_change` returns when it opens or closes
(the runner's readiness follows it: see comfyui_watch.py).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from services.runner.comfyui_client import ComfyUI
from services.runner.comfyui_messages import ROUTED_TYPES
from services.runner.config import Backoff
from services.runner.errors import ComfyUIUnreachable

log = logging.getLogger(__name__)

# The websocket messages the feed reads: queue changes, and what it routes to executions.
READ_TYPES = ROUTED_TYPES | {"status"}


@dataclass(frozen=True)
class WsMessage:
    message: dict[str, Any]
    at: float


@dataclass(frozen=True)
class QueueStatus:
    queue_remaining: int


@dataclass(frozen=True)
class FeedDown:
    pass


@dataclass(frozen=True)
class FeedUp:
    pass


FeedItem = WsMessage | QueueStatus | FeedDown | FeedUp


class ComfyUIFeed:
    """Owns the websocket; see the module docstring."""

    def __init__(
        self,
        comfyui: ComfyUI,
        client_id: str,
        *,
        backoff: Backoff,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client_id = client_id
        self._comfyui = comfyui
        self._backoff = backoff
        self._clock = clock
        self._inboxes: dict[str, asyncio.Queue[Any]] = {}
        self._connected = asyncio.Event()
        self._change = asyncio.Event()
        self.generation = 0

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def subscribe(self, prompt_id: str, inbox: asyncio.Queue[Any]) -> None:
        self._inboxes[prompt_id] = inbox

    def unsubscribe(self, prompt_id: str) -> None:
        self._inboxes.pop(prompt_id, None)

    async def wait_connected(self, timeout_s: float) -> bool:
        """True once the socket is open; False if it stays closed for `timeout_s`."""
        if self._connected.is_set():
            return True  # (wait_for would still make a task and a timer, and cost a loop turn)
        try:
            await asyncio.wait_for(self._connected.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def wait_change(self) -> None:
        """Returns the next time the socket opens or closes."""
        await self._change.wait()

    def _changed(self) -> None:
        self._change.set()
        self._change = asyncio.Event()

    def _broadcast(self, item: FeedItem) -> None:
        for inbox in list(self._inboxes.values()):
            inbox.put_nowait(item)

    async def run(self) -> None:
        """Connects, dispatches, reconnects; runs until cancelled."""
        attempt = 0
        while True:
            try:
                async with self._comfyui.websocket(self.client_id, READ_TYPES) as messages:
                    attempt = 0
                    self.generation += 1
                    self._connected.set()
                    self._changed()
                    log.info("ComfyUI websocket open (clientId %s)", self.client_id)
                    self._broadcast(FeedUp())
                    async for message in messages:
                        self._dispatch(message)
            except ComfyUIUnreachable as err:
                log.debug("ComfyUI websocket unavailable: %s", err)
            except Exception:  # never let the feed die: every execution would lose its messages
                log.exception("ComfyUI websocket failed unexpectedly")
            finally:
                if self._connected.is_set():
                    self._connected.clear()
                    self._changed()
                    log.warning("ComfyUI websocket closed")
                    self._broadcast(FeedDown())
            await asyncio.sleep(self._backoff.delay(attempt, random.random()))
            attempt += 1

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        data = message.get("data")
        if not isinstance(data, dict):
            return
        if kind == "status":
            status = data.get("status")
            exec_info = status.get("exec_info") if isinstance(status, dict) else None
            remaining = exec_info.get("queue_remaining") if isinstance(exec_info, dict) else None
            if isinstance(remaining, int):
                self._broadcast(QueueStatus(remaining))
            return
        if kind not in ROUTED_TYPES:
            return
        inbox = self._inboxes.get(str(data.get("prompt_id")))
        if inbox is not None:
            inbox.put_nowait(WsMessage(message, self._clock()))
