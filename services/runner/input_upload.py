"""Copies an assignment's input files from storage (GetObject) to ComfyUI (POST /upload/image).

Each file goes to the subfolder named after the workflow, under the filename the client
sent (or the last segment of its key); `$file(param)` values become `"<subfolder>/<name>"`
(PROTOCOL.md §7). A failure ends the execution with the event `upload_inputs` returns
instead of the names: `failed` (InputUnavailable, ComfyUIUploadFailed), or `handed_back`
when ComfyUI cannot be reached (nothing ran: another runner may run it).
"""

from __future__ import annotations

from comfyfleet.runner.v1 import runner_session_service_pb2 as session_pb2

from services.runner import events
from services.runner.comfyui_client import ComfyUI
from services.runner.errors import ComfyUIServerError, ComfyUIUnreachable, StorageError
from services.runner.storage_client import ObjectStore


async def upload_inputs(
    assignment: session_pb2.Assignment, comfyui: ComfyUI, storage: ObjectStore
) -> dict[str, str] | events.RunnerEvent:
    """param -> the name ComfyUI knows the uploaded file by; or the event to end with."""
    names: dict[str, str] = {}
    for item in assignment.inputs:
        filename = item.filename or item.object.key.rsplit("/", 1)[-1]
        try:
            async with storage.get(item.object.key) as stored:
                uploaded = await comfyui.upload_image(
                    filename,
                    stored.ref.content_type or item.object.content_type,
                    stored.chunks,
                    subfolder=assignment.workflow_id,
                )
        except StorageError as err:
            return events.failed("InputUnavailable", f"input {item.param!r}: {err.message}")
        except ComfyUIUnreachable as err:
            return events.handed_back(f"ComfyUI unreachable: {err.message}")
        except ComfyUIServerError as err:
            message = f"upload of input {item.param!r} ({filename}) refused: HTTP {err.status} {err.text}".strip()
            return events.failed("ComfyUIUploadFailed", message)
        names[item.param] = uploaded.reference
    return names
