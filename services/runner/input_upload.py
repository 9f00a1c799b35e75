"""Copies an assignment's input files from storage (GetObject) to ComfyUI (POST /upload/image),
a few side by side.

Each file goes to the subfolder named after the workflow, under the filename the client
sent (or the last segment of its key); `$file(param)` values become `"<subfolder>/<name>"`
(PROTOCOL.md §7). A failure ends the execution with the event `upload_inputs` returns
instead of the names: `failed` (InputUnavailable, ComfyUIUploadFailed), or `handed_back`
when ComfyUI cannot be reached (nothing ran: another runner may run it). While storage cannot
be reached at all (restarting) a file is tried again for up to STORAGE_PATIENCE_S, as outputs
are: storage is shared by every runner, so handing the workflow back would not help.
"""

from __future__ import annotations

import asyncio
import logging
import time

from comfyfleet.runner.v1 import runner_session_service_pb2 as session_pb2

from services.runner import events, storage_client
from services.runner.comfyui_client import ComfyUI, UploadedImage
from services.runner.errors import ComfyUIServerError, ComfyUIUnreachable, StorageError
from services.runner.storage_client import ObjectStore

log = logging.getLogger(__name__)

RETRY_DELAY_S = 0.5
MAX_RETRY_DELAY_S = 2.0
AT_ONCE = 4  # files of one assignment uploaded at a time


async def _upload(
    item: session_pb2.InputFile, filename: str, subfolder: str, comfyui: ComfyUI, storage: ObjectStore
) -> UploadedImage:
    """One input file, retried while storage is unavailable. A retry after a cut upload is
    safe: ComfyUI keeps identical bytes under the same name and renames different ones
    (PROTOCOL.md §7), and answers with the name it used."""
    patience_until = time.monotonic() + storage_client.STORAGE_PATIENCE_S
    attempt = 0
    while True:
        attempt += 1
        try:
            async with storage.get(item.object.key) as stored:
                return await comfyui.upload_image(
                    filename, stored.ref.content_type or item.object.content_type, stored.chunks, subfolder=subfolder
                )
        except StorageError as err:
            if err.reason != storage_client.UNAVAILABLE or time.monotonic() >= patience_until:
                raise
            log.warning("reading input %s (attempt %d): %s", item.object.key, attempt, err.message)
            await asyncio.sleep(min(RETRY_DELAY_S * attempt, MAX_RETRY_DELAY_S))


async def upload_inputs(
    assignment: session_pb2.Assignment, comfyui: ComfyUI, storage: ObjectStore
) -> dict[str, str] | events.RunnerEvent:
    """param -> the name ComfyUI knows the uploaded file by; or the event to end with. Up to
    AT_ONCE files go at a time; once one fails the others are stopped, and the first failure
    in the assignment's order is the event. (ComfyUI picks a file's name, and renames one
    whose name is taken by other bytes, in one step of its event loop: files of the same name
    may go side by side.)"""
    slots = asyncio.Semaphore(AT_ONCE)

    async def one(item: session_pb2.InputFile) -> str | events.RunnerEvent:
        filename = item.filename or item.object.key.rsplit("/", 1)[-1]
        async with slots:
            try:
                uploaded = await _upload(item, filename, assignment.workflow_id, comfyui, storage)
            except StorageError as err:
                return events.failed("InputUnavailable", f"input {item.param!r}: {err.message}")
            except ComfyUIUnreachable as err:
                return events.handed_back(f"ComfyUI unreachable: {err.message}")
            except ComfyUIServerError as err:
                message = f"upload of input {item.param!r} ({filename}) refused: HTTP {err.status} {err.text}".strip()
                return events.failed("ComfyUIUploadFailed", message)
        return uploaded.reference

    uploads = [asyncio.create_task(one(item), name=f"upload {item.param}") for item in assignment.inputs]
    try:
        pending = set(uploads)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if any(not isinstance(task.result(), str) for task in done):
                break
    finally:
        for task in uploads:
            task.cancel()
        await asyncio.gather(*uploads, return_exceptions=True)
    names: dict[str, str] = {}
    for item, task in zip(assignment.inputs, uploads, strict=True):
        result = None if task.cancelled() else task.result()
        if result is None:
            continue  # stopped: another failed
        if not isinstance(result, str):
            return result
        names[item.param] = result
    return names
