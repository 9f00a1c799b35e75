"""Deletes the input files of workflows that reached a terminal state.

Inputs are the users' files; they are kept only while a workflow needs them (API.md, issue 6:
"deleted after workflow completion"). A rerun that does not send a file again therefore gets
409 INPUT_GONE once its source has finished. Deletion runs in owned background tasks; when
storage is down the files stay and the next sweep of the same prefix (on delete of the
workflow) removes them. A workflow whose record names no file input has nothing under its
prefix (the gateway removes what it stored for a create that failed), so it costs storage
no call.
"""

from __future__ import annotations

import asyncio
import json
import logging

from services.scheduler.db.models import WorkflowRow
from services.scheduler.storage_client import ObjectStore

log = logging.getLogger(__name__)


class InputSweeper:
    def __init__(self, storage: ObjectStore) -> None:
        self.storage = storage
        self.tasks: set[asyncio.Task[None]] = set()

    def finished(self, row: WorkflowRow) -> None:
        """Called once a workflow is terminal: deletes `inputs/{id}/` in the background."""
        if not any(entry.get("is_file") for entry in json.loads(row.inputs_json)):
            return
        task = asyncio.create_task(self._delete(row.id), name=f"delete-inputs-{row.id}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _delete(self, workflow_id: str) -> None:
        try:
            await self.storage.delete_prefix(f"inputs/{workflow_id}/")
        except Exception as err:
            log.warning("could not delete the inputs of %s: %s", workflow_id, err)

    async def close(self) -> None:
        """Lets running deletions finish (bounded), then cancels what is left."""
        if self.tasks:
            _done, pending = await asyncio.wait(set(self.tasks), timeout=5)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
