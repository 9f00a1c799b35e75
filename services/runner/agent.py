"""The runner agent: the executions it holds, its slots, and what the scheduler asks of it.

The session hands it `Assignment`, `Cancel`, `Drain` and `Welcome.abandon`; it asks it what
it holds (for Hello) and how much is in flight (for Heartbeat); when ComfyUI becomes
unreachable it has it hand back what ComfyUI was never sent. An assignment is held from the
moment it arrives until its terminal event is emitted; at most `slots` of them run at once,
the rest wait for a slot in arrival order.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

from comfyfleet.runner.v1 import runner_session_service_pb2 as session_pb2

from services.common.comfy_schemas import NodeSchema
from services.common.logs import log_context
from services.runner.comfyui_client import ComfyUI
from services.runner.comfyui_feed import ComfyUIFeed
from services.runner.execution import Execution, ExecutionSettings
from services.runner.outbox import Outbox, WorkflowKey
from services.runner.storage_client import ObjectStore

log = logging.getLogger(__name__)


class RunnerAgent:
    def __init__(
        self,
        *,
        comfyui: ComfyUI,
        feed: ComfyUIFeed,
        storage: ObjectStore,
        outbox: Outbox,
        slots: int,
        settings: ExecutionSettings,
        schemas: Callable[[], Mapping[str, NodeSchema]] = dict,
    ) -> None:
        self._comfyui = comfyui
        self._feed = feed
        self._storage = storage
        self._outbox = outbox
        self._settings = settings
        self._schemas = schemas
        self._slots = asyncio.Semaphore(slots)
        self._executions: dict[WorkflowKey, Execution] = {}
        self._draining = False
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def draining(self) -> bool:
        return self._draining

    def held(self) -> list[WorkflowKey]:
        return list(self._executions)

    def in_flight(self) -> int:
        return len(self._executions)

    def assign(self, assignment: session_pb2.Assignment) -> None:
        key: WorkflowKey = (assignment.workflow_id, assignment.attempt)
        if self._draining:
            log.warning("draining: not taking %s", key)
            return
        if key in self._executions:
            log.info("already holding %s; repeated assignment ignored", key)
            return
        execution = Execution(
            assignment,
            comfyui=self._comfyui,
            feed=self._feed,
            storage=self._storage,
            emit=self._outbox.emit,
            settings=self._settings,
            schemas=self._schemas,
        )
        self._executions[key] = execution
        self._idle.clear()
        with log_context(workflow_id=assignment.workflow_id):  # the task's log lines name the workflow
            task = execution.start(self._slots)
        task.add_done_callback(lambda _t: self._forget(key, execution))
        log.debug("assignment %s: prompt %s", key, execution.prompt_id)  # one a workflow: not at INFO

    def _forget(self, key: WorkflowKey, execution: Execution) -> None:
        if self._executions.get(key) is execution:
            del self._executions[key]
        self._outbox.finish(key)
        if not self._executions:
            self._idle.set()

    def cancel(self, key: WorkflowKey) -> None:
        execution = self._executions.get(key)
        if execution is None:
            log.info("cancel of %s, which is not held", key)
            return
        execution.cancel()

    async def hand_back_unstarted(self, reason: str, timeout_s: float = 2.0) -> None:
        """Gives back (`handed_back` events) every held execution ComfyUI was not sent yet."""
        tasks = [e.task for e in self._executions.values() if e.hand_back(reason) and e.task is not None]
        if tasks:
            log.info("handing back %d assignment(s): %s", len(tasks), reason)
            await asyncio.wait(tasks, timeout=timeout_s)

    def abandon(self, keys: set[WorkflowKey]) -> None:
        """The scheduler gave these up: cancel them in ComfyUI, report nothing."""
        for key in keys:
            execution = self._executions.get(key)
            if execution is not None:
                log.info("abandoning %s", key)
                execution.abandon()
        self._outbox.drop(keys)

    def drain(self) -> None:
        """Finish what is held, take nothing new."""
        if not self._draining:
            log.info("draining: %d held", len(self._executions))
        self._draining = True

    async def wait_idle(self, timeout_s: float) -> bool:
        """True once nothing is held; False if something still is after `timeout_s`."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def close(self, grace_s: float = 5.0) -> None:
        """Abandons what is still held (cancelled in ComfyUI, nothing reported: the scheduler
        requeues it when the session ends), waits `grace_s`, then stops every task."""
        self._draining = True
        for execution in list(self._executions.values()):
            execution.abandon()
        await self.wait_idle(grace_s)
        tasks = [e.task for e in self._executions.values() if e.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
