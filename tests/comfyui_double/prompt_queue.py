"""The prompt queue (execution.PromptQueue): a min-heap of pending items, the running ones,
the history and the /free flags.

Queue items are tuples `(number, prompt_id, prompt, extra_data, outputs_to_execute, sensitive)`
and are compared as tuples, as in the server (equal numbers fall back to the prompt id).
`queue_pending` is reported in heap order, not sorted.
"""

from __future__ import annotations

import asyncio
import copy
import heapq
from collections.abc import Callable
from typing import Any

MAXIMUM_HISTORY_SIZE = 10000

QueueItem = tuple[Any, ...]


class PromptQueue:
    def __init__(self, on_change: Callable[[], None]) -> None:
        self.queue: list[QueueItem] = []
        self.currently_running: dict[int, QueueItem] = {}
        self.task_counter = 0
        self.history: dict[str, dict[str, Any]] = {}
        self.flags: dict[str, Any] = {}
        self._on_change = on_change
        self._wakeup = asyncio.Event()

    def put(self, item: QueueItem) -> None:
        heapq.heappush(self.queue, item)
        self._on_change()
        self._wakeup.set()

    async def get(self) -> tuple[QueueItem, int] | None:
        """The next item (moved to running), or None when woken by a flag with nothing queued."""
        while not self.queue:
            if self.flags:
                return None
            self._wakeup.clear()
            await self._wakeup.wait()
        item = heapq.heappop(self.queue)
        task_id = self.task_counter
        self.currently_running[task_id] = copy.deepcopy(item)
        self.task_counter += 1
        self._on_change()
        return item, task_id

    def task_done(self, task_id: int, history_result: dict[str, Any], status: dict[str, Any]) -> None:
        prompt = self.currently_running.pop(task_id)
        if len(self.history) > MAXIMUM_HISTORY_SIZE:
            self.history.pop(next(iter(self.history)))
        # Reusing a prompt id replaces the entry in place (dict assignment keeps its position).
        self.history[prompt[1]] = {"prompt": prompt[:5], "outputs": {}, "status": copy.deepcopy(status)}
        self.history[prompt[1]].update(history_result)
        self._on_change()

    def tasks_remaining(self) -> int:
        return len(self.queue) + len(self.currently_running)

    def current_queue(self) -> tuple[list[QueueItem], list[QueueItem]]:
        return list(self.currently_running.values()), list(self.queue)

    def wipe_queue(self) -> None:
        self.queue = []
        self._on_change()

    def delete_queue_item(self, matches: Callable[[QueueItem], bool]) -> bool:
        for index, item in enumerate(self.queue):
            if matches(item):
                if len(self.queue) == 1:
                    self.wipe_queue()
                else:
                    self.queue.pop(index)
                    heapq.heapify(self.queue)
                    self._on_change()
                return True
        return False

    def get_history(self, prompt_id: str | None = None, max_items: int | None = None,
                    offset: int = -1) -> dict[str, Any]:
        if prompt_id is not None:
            return {prompt_id: copy.deepcopy(self.history[prompt_id])} if prompt_id in self.history else {}
        out: dict[str, Any] = {}
        if offset < 0 and max_items is not None:
            offset = len(self.history) - max_items
        for index, key in enumerate(self.history):
            if index >= offset:
                out[key] = self.history[key]
                if max_items is not None and len(out) >= max_items:
                    break
        return copy.deepcopy(out)

    def wipe_history(self) -> None:
        self.history = {}

    def delete_history_item(self, prompt_id: Any) -> None:
        self.history.pop(prompt_id, None)

    def set_flag(self, name: str, value: Any) -> None:
        self.flags[name] = value
        self._wakeup.set()

    def take_flags(self) -> dict[str, Any]:
        flags, self.flags = self.flags, {}
        return flags
