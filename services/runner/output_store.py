"""Copies a prompt's outputs from ComfyUI (GET /view) into storage (storage_client.put:
one message of the PutObjectsBytes stream held open up to 1 MiB, a PutObject stream beyond).

`OutputCopies` starts a copy as soon as ComfyUI names the file (its node's `executed` message,
sent once the node has written it), while the rest of the prompt still runs, and runs up to
AT_ONCE copies at a time (a batch of images is copied side by side, not one by one). Its
`output_stored` events go out in the order ComfyUI named the files, whatever order the copies
end in: the workflow's list of outputs keeps ComfyUI's order. `finish` waits for every copy
once the prompt succeeded. When it failed or was interrupted, `settle` lets the copies under
way end (for up to SETTLE_S: what a prompt wrote before it failed is kept, as ComfyUI keeps
it); `close` stops them (ComfyUI gone, the run cancelled). Nothing is emitted after `close`,
so never after the caller's terminal event.

Each file goes to `{output_prefix}{node_id}/{filename}` with the content type its extension
names (`media_types`; what ComfyUI served when the extension is unknown), and yields an
`output_stored` event. No outputs at all is a success with an empty list. A failed copy is
retried a few times, and for up to STORAGE_PATIENCE_S while storage cannot be reached (both
sides are idempotent: /view is a read, a put replaces the key atomically); if it still
fails the caller gets a `failed` event to end with instead of `completed`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable

from comfyfleet.storage.v1 import object_pb2

from services.runner import events, storage_client
from services.runner.comfyui_client import ComfyUI
from services.runner.comfyui_messages import OutputFile
from services.runner.errors import ComfyUIError, StorageError
from services.runner.media_types import content_type_for
from services.runner.storage_client import UNAVAILABLE as STORAGE_UNAVAILABLE
from services.runner.storage_client import ObjectStore

log = logging.getLogger(__name__)

ATTEMPTS = 3
RETRY_DELAY_S = 0.5
MAX_RETRY_DELAY_S = 2.0
AT_ONCE = 4  # copies of one prompt running at a time
SETTLE_S = 10.0  # what a failed prompt's copies under way are given to end

Emit = Callable[[events.RunnerEvent], None]


def output_key(prefix: str, output: OutputFile) -> str:
    return f"{prefix}{output.node_id}/{output.filename}"


async def _copy(output: OutputFile, key: str, comfyui: ComfyUI, storage: ObjectStore) -> object_pb2.ObjectRef:
    async with comfyui.view(output) as download:
        return await storage.put(key, content_type_for(output.filename, download.content_type), download.chunks)


async def _copy_with_retries(
    output: OutputFile, key: str, comfyui: ComfyUI, storage: ObjectStore
) -> events.RunnerEvent:
    """`output_stored` once the copy succeeded, else the `failed` event to end with."""
    patience_until = time.monotonic() + storage_client.STORAGE_PATIENCE_S
    attempt = 0
    while True:
        attempt += 1
        try:
            ref = await _copy(output, key, comfyui, storage)
            return events.output_stored(output.node_id, output.filename, ref)
        except (ComfyUIError, StorageError) as err:
            log.warning("storing %s (attempt %d): %s", key, attempt, err.message)
            waiting = err.reason == STORAGE_UNAVAILABLE and time.monotonic() < patience_until
            if attempt >= ATTEMPTS and not waiting:
                return events.failed(
                    "OutputStoreFailed",
                    f"output {output.filename} of node {output.node_id}: {err.message}",
                    node_id=output.node_id,
                )
            await asyncio.sleep(min(RETRY_DELAY_S * attempt, MAX_RETRY_DELAY_S))


class OutputCopies:
    """One prompt's output copies; see the module docstring."""

    def __init__(self, prefix: str, comfyui: ComfyUI, storage: ObjectStore, emit: Emit,
                 *, at_once: int = AT_ONCE) -> None:
        self._prefix = prefix
        self._comfyui = comfyui
        self._storage = storage
        self._emit = emit
        self._slots = asyncio.Semaphore(at_once)
        self._seen: set[OutputFile] = set()
        self._copies: list[asyncio.Task[events.RunnerEvent]] = []
        self._emitted = 0  # copies whose event went out (a prefix of _copies)
        self._failure: events.RunnerEvent | None = None
        self._closed = False

    def add(self, outputs: Iterable[OutputFile]) -> None:
        """Starts copying each output not added before."""
        for output in outputs:
            if self._closed or output in self._seen:
                continue
            self._seen.add(output)
            task = asyncio.create_task(self._run(output), name=f"copy {output.node_id}/{output.filename}")
            task.add_done_callback(self._ended)
            self._copies.append(task)

    async def _run(self, output: OutputFile) -> events.RunnerEvent:
        try:
            async with self._slots:
                return await _copy_with_retries(output, output_key(self._prefix, output), self._comfyui, self._storage)
        except Exception as err:  # a bug: the workflow fails (as one in the execution would fail it)
            log.exception("copying output %s of node %s failed unexpectedly", output.filename, output.node_id)
            return events.failed("RunnerError", f"{type(err).__name__}: {err}", node_id=output.node_id)

    def _ended(self, _task: asyncio.Task[events.RunnerEvent]) -> None:
        """Emits, in order, the events of the copies ended so far: up to the first still running
        (or the first that failed: what follows it is not reported)."""
        while not self._closed and self._failure is None and self._emitted < len(self._copies):
            task = self._copies[self._emitted]
            if not task.done():
                return
            # (Cancelled other than by `close`, e.g. at the loop's shutdown: it ended unstored.)
            event = events.failed("RunnerError", "an output copy was stopped") if task.cancelled() else task.result()
            if event.WhichOneof("kind") != "output_stored":
                self._failure = event
                return
            self._emitted += 1
            self._emit(event)

    async def finish(self) -> events.RunnerEvent | None:
        """Waits for every copy (`output_stored` for each); the `failed` event if one failed."""
        await self._wait()
        if self._failure is None and self._emitted < len(self._copies):
            self._failure = events.failed("RunnerError", "the output copies were stopped before they ended")
        failure = self._failure
        self.close()
        return failure

    async def settle(self, timeout_s: float) -> None:
        """For a prompt that failed or was interrupted: the copies under way may end (within
        `timeout_s`), so what ComfyUI wrote before is kept; then `close`."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._wait()
        except TimeoutError:
            log.warning("outputs of a failed prompt: stopped the copies still running after %.0f s", timeout_s)
        self.close()

    async def _wait(self) -> None:
        while not self._closed and self._failure is None and self._emitted < len(self._copies):
            task = self._copies[self._emitted]
            await asyncio.wait({task})
            self._ended(task)  # (its own callback may not have run yet)

    def close(self) -> None:
        """Stops the copies still running; nothing more is emitted."""
        self._closed = True
        for task in self._copies:
            task.cancel()


async def store_outputs(
    outputs: Iterable[OutputFile],
    prefix: str,
    comfyui: ComfyUI,
    storage: ObjectStore,
    emit: Emit,
) -> events.RunnerEvent | None:
    """Stores every output, emitting `output_stored` for each; a `failed` event if one fails."""
    copies = OutputCopies(prefix, comfyui, storage, emit)
    copies.add(outputs)
    return await copies.finish()
