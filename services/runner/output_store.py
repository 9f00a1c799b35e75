"""Copies a finished prompt's outputs from ComfyUI (GET /view) into storage (storage_client.put:
one message of the PutObjectsBytes stream held open up to 1 MiB, a PutObject stream beyond).

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


def output_key(prefix: str, output: OutputFile) -> str:
    return f"{prefix}{output.node_id}/{output.filename}"


async def _copy(output: OutputFile, key: str, comfyui: ComfyUI, storage: ObjectStore) -> object_pb2.ObjectRef:
    async with comfyui.view(output) as download:
        return await storage.put(key, content_type_for(output.filename, download.content_type), download.chunks)


async def store_outputs(
    outputs: Iterable[OutputFile],
    prefix: str,
    comfyui: ComfyUI,
    storage: ObjectStore,
    emit: Callable[[events.RunnerEvent], None],
) -> events.RunnerEvent | None:
    """Stores every output, emitting `output_stored` for each; a `failed` event if one fails."""
    for output in outputs:
        key = output_key(prefix, output)
        patience_until = time.monotonic() + storage_client.STORAGE_PATIENCE_S
        attempt = 0
        while True:
            attempt += 1
            try:
                ref = await _copy(output, key, comfyui, storage)
                break
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
        emit(events.output_stored(output.node_id, output.filename, ref))
    return None
