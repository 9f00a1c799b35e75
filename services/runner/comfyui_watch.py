"""Whether the runner is ready to take work: its ComfyUI answers, and what ComfyUI can run.

The session says Hello only with facts read just then (`facts()`: the websocket is open, then
`/system_stats` and `/object_info` answer), so a runner whose ComfyUI does not answer never
registers and takes no work. Once welcomed, the session also waits on `lost(said)`, which
returns why the session must end:

    ComfyUI unreachable   the websocket stayed closed for `unready_after_s`: the runner is
                          unready until ComfyUI answers again, then says Hello anew
    ComfyUI changed       the websocket reopened (ComfyUI restarted) and its version or
                          `/object_info` digest differ from what Hello said: Hello again with
                          the new node classes

Held work is not touched by either: it keeps running (or finds out ComfyUI lost it) and its
events wait in the outbox for the next session. `schemas()` is the node schemas read last,
used to coerce values before `POST /prompt`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from services.common.comfy_schemas import NodeSchema
from services.runner.comfyui_client import ComfyUI
from services.runner.comfyui_feed import ComfyUIFeed
from services.runner.errors import ComfyUIError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ComfyUIFacts:
    """What Hello reports about ComfyUI."""

    version: str
    digest: str
    schemas: Mapping[str, NodeSchema]

    @property
    def node_classes(self) -> list[str]:
        return sorted(self.schemas)


class ComfyUIWatch:
    def __init__(self, comfyui: ComfyUI, feed: ComfyUIFeed, *, unready_after_s: float) -> None:
        self._comfyui = comfyui
        self._feed = feed
        self._unready_after_s = unready_after_s
        self._last: ComfyUIFacts | None = None

    def schemas(self) -> Mapping[str, NodeSchema]:
        return self._last.schemas if self._last is not None else {}

    async def facts(self) -> ComfyUIFacts:
        """Waits for ComfyUI's websocket, then reads its version and node schemas now.
        Raises `ComfyUIError` when ComfyUI does not answer."""
        while not self._feed.connected:
            await self._feed.wait_change()
        version = await self._comfyui.comfyui_version()
        info = await self._comfyui.object_info()
        self._last = ComfyUIFacts(version, info.digest, info.schemas)
        return self._last

    async def lost(self, said: ComfyUIFacts) -> str:
        """Returns (the reason) once the session must end; see the module docstring."""
        generation = self._feed.generation
        while True:
            if not self._feed.connected and not await self._feed.wait_connected(self._unready_after_s):
                return f"ComfyUI unreachable for {self._unready_after_s:g} s: runner unready"
            if self._feed.generation != generation:
                generation = self._feed.generation
                try:
                    now = await self.facts()
                except ComfyUIError as err:
                    log.info("ComfyUI reconnected but did not say what it runs: %s", err.message)
                    continue
                if (now.version, now.digest) != (said.version, said.digest):
                    return "ComfyUI restarted with another version or node set"
                continue
            await self._feed.wait_change()
