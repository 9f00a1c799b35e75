"""Copies a finished prompt's outputs from ComfyUI (GET /view) into storage (PutObject).

Each file goes to `{output_prefix}{node_id}/{filename}` with the content type its extension
names (`media_types`; what ComfyUI served when the extension is unknown), and yields an
`output_stored` event. No outputs at all is a success with an empty list. A failed copy is
retried a few times (both sides are idempotent: /view is a read, PutObject replaces the key
atomically); if it still fails the caller gets a `failed` event to end with instead of `completed`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from comfyfleet.storage.v1 import object_pb2

from services.runner import events
from services.runner.comfyui_client import ComfyUI
from services.runner.comfyui_messages import OutputFile
from services.runner.errors import ComfyUIError, StorageError
from services.runner.media_types import content_type_for
from services.runner.storage_client import ObjectStore

log = logging.getLogger(__name__)

ATTEMPTS = 3
RETRY_DELAY_S = 0.5


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
        for attempt in range(1, ATTEMPTS + 1):
            try:
                ref = await _copy(output, key, comfyui, storage)
                break
            except (ComfyUIError, StorageError) as err:
                log.warning("storing %s (attempt %d/%d): %s", key, attempt, ATTEMPTS, err.message)
                if attempt == ATTEMPTS:
                    return events.failed(
                        "OutputStoreFailed",
                        f"output {output.filename} of node {output.node_id}: {err.message}",
                        node_id=output.node_id,
                    )
                await asyncio.sleep(RETRY_DELAY_S * attempt)
        emit(events.output_stored(output.node_id, output.filename, ref))
    return None
