"""Reads of one prompt's place in ComfyUI's queue (GET /queue), beside its websocket.

An execution asks for a read once ComfyUI accepted its prompt (unless the websocket said it
started first), and again whenever a `status` broadcast says the queue changed while it
waits, but never awaits one: the answer arrives as `ANSWERED` in the execution's inbox, in
line with the websocket's messages, so a slow /queue never holds back the prompt's own
messages (its start, its nodes, its end). One read runs at a time; asking during a read
means one more read after it, since the queue changed after it began.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from services.runner.comfyui_client import ComfyUI
from services.runner.errors import ComfyUIError
from services.runner.prompt_graph import queue_position

log = logging.getLogger(__name__)

ANSWERED = object()  # put in the inbox when a read ends (answered, failed or cancelled)


class QueueReads:
    def __init__(self, comfyui: ComfyUI, prompt_id: str, inbox: asyncio.Queue[Any]) -> None:
        self._comfyui = comfyui
        self._prompt_id = prompt_id
        self._inbox = inbox
        self._task: asyncio.Task[int | None] | None = None
        self.asked_again = False

    def request(self) -> None:
        """Starts a read, or asks for one more after the read under way."""
        if self._task is not None and not self._task.done():
            self.asked_again = True
            return
        self.asked_again = False
        self._task = asyncio.create_task(self._read(), name=f"queue position {self._prompt_id}")
        self._task.add_done_callback(lambda _t: self._inbox.put_nowait(ANSWERED))

    def answer(self) -> tuple[bool, int | None]:
        """(True, position) once the last read answered (position None: ComfyUI did not say);
        (False, None) while it runs, after it was cancelled, or before any read."""
        task = self._task
        if task is None or not task.done() or task.cancelled():
            return False, None
        return True, task.result()

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _read(self) -> int | None:
        try:
            return queue_position(await self._comfyui.queue(), self._prompt_id)
        except ComfyUIError as err:
            log.info("GET /queue failed: %s", err.message)
            return None
