"""One Assignment, end to end, on this runner's ComfyUI.

    waiting    for a free slot (never more than `slots` executions past this point)
    preparing  a UI-format (editor) workflow is converted with ComfyUI's schemas (comfy_graph)
               or invalid; each input: storage GetObject -> POST /upload/image (subfolder = workflow id);
               `$file(param)` values become "<subfolder>/<name>"          -> uploaded
    submitting values coerced to the node input types (comfy_schemas.coerce_prompt), then
               POST /prompt {prompt, client_id, prompt_id (ours)}, websocket already open
               400 -> invalid; 500/other -> failed; reset mid-request -> failed ComfyUIUnreachable
    queued     position from GET /queue, re-read when a `status` broadcast changes the count; the
               reads run beside the websocket (never in the way of its messages): `queued` goes
               out when the first read answers, or as 0 (running) when the prompt starts first
               (a read is asked for only once the inbox is empty and `queue_read_grace_s`
               after POST /prompt answered, so none runs for a prompt that an idle ComfyUI
               starts at once)
    running    websocket messages -> events (comfyui_messages.PromptTracker)
    running    ... and each output, once its node's `executed` names it: GET /view -> storage (a
               PutObjectsBytes item, or a PutObject stream over 1 MiB) -> output_stored, a few at
               a time, while the prompt goes on (output_store.OutputCopies)
    storing    the copies not done yet are waited for; then completed

Handed back (run it elsewhere) when ComfyUI never took the prompt: its websocket is not open
within `comfyui_unready_after_s`, an upload finds it unreachable, POST /prompt cannot connect,
or it restarted and lost the prompt before running any of it.

Cancel: waiting/preparing -> stop; queued -> delete from ComfyUI's queue; running ->
targeted interrupt (its execution_interrupted ends it). Each ends in `cancelled`.
ComfyUI gone: the websocket feed says FeedDown/FeedUp. Once back, the prompt is reconciled
with GET /queue and GET /history/{id}; a prompt in neither that had started failed
(ComfyUIRestarted), one that had not is handed back. Down for
longer than `comfyui_down_timeout_s` -> failed (ComfyUIUnreachable). With no message for
`poll_interval_s`, the same reconciliation runs, so no prompt waits forever on a lost message.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from comfyfleet.runner.v1 import runner_session_service_pb2 as session_pb2

from services.common.comfy_graph import is_ui_workflow
from services.common.comfy_schemas import NodeSchema, coerce_prompt
from services.runner import events
from services.runner.comfyui_client import ComfyUI
from services.runner.comfyui_feed import ComfyUIFeed, FeedDown, FeedUp, QueueStatus, WsMessage
from services.runner.comfyui_messages import (
    NodeProgress,
    NodesCached,
    NodeStarted,
    OutputsReady,
    PromptFailed,
    PromptInterrupted,
    PromptStarted,
    PromptSucceeded,
    PromptTracker,
    Step,
)
from services.runner.errors import (
    ComfyUIError,
    ComfyUIRejected,
    ComfyUIServerError,
    ComfyUIUnreachable,
    InvalidAssignment,
)
from services.runner.input_upload import upload_inputs
from services.runner.outbox import WorkflowKey
from services.runner.output_store import SETTLE_S, OutputCopies
from services.runner.prompt_graph import (
    from_ui_format,
    node_errors,
    node_errors_summary,
    node_types,
    parse_prompt,
    substitute_files,
    validation_message,
)
from services.runner.queue_reads import ANSWERED, QueueReads
from services.runner.storage_client import ObjectStore

log = logging.getLogger(__name__)


class State(enum.Enum):
    WAITING = "waiting"
    PREPARING = "preparing"
    SUBMITTING = "submitting"
    QUEUED = "queued"
    RUNNING = "running"
    STORING = "storing"
    DONE = "done"


@dataclass(frozen=True)
class ExecutionSettings:
    progress_interval_s: float = 0.1
    poll_interval_s: float = 15.0
    comfyui_down_timeout_s: float = 60.0
    comfyui_unready_after_s: float = 5.0
    queue_read_grace_s: float = 0.05  # (RunnerSettings has what each setting means)


class _Finished(Exception):
    """The execution reached its terminal event."""


_CANCEL = object()


class Execution:
    """Runs one assignment; `start` it, `cancel` or `abandon` it, await `task`."""

    def __init__(
        self,
        assignment: session_pb2.Assignment,
        *,
        comfyui: ComfyUI,
        feed: ComfyUIFeed,
        storage: ObjectStore,
        emit: Callable[[WorkflowKey, events.RunnerEvent], object],
        settings: ExecutionSettings,
        schemas: Callable[[], Mapping[str, NodeSchema]] = dict,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.assignment = assignment
        self.key: WorkflowKey = (assignment.workflow_id, assignment.attempt)
        self.prompt_id = str(uuid.uuid4())
        self.state = State.WAITING
        self.task: asyncio.Task[None] | None = None
        self._comfyui = comfyui
        self._feed = feed
        self._storage = storage
        self._emit_to = emit
        self._settings = settings
        self._schemas = schemas
        self._clock = clock
        self._inbox: asyncio.Queue[Any] = asyncio.Queue()
        self._cancel_requested = False
        self._hand_back_reason = ""
        self._silent = False
        self._tracker: PromptTracker | None = None
        self._down_since: float | None = None
        self._position: int | None = None
        self._queued_sent = True  # False from POST /prompt's answer until `queued` is emitted
        self._position_wanted = False  # the queue changed (or the prompt was accepted): read it
        self._position_due = 0.0  # (clock) not read before then: the accepted prompt's grace
        self._queue_reads = QueueReads(comfyui, self.prompt_id, self._inbox)
        self._copies = OutputCopies(assignment.output_prefix, comfyui, storage, self._emit)

    # -- control -------------------------------------------------------------------------------

    def start(self, slots: asyncio.Semaphore) -> asyncio.Task[None]:
        self.task = asyncio.create_task(self._run(slots), name=f"execution {self.key}")
        return self.task

    def cancel(self) -> None:
        """Stops the run and reports `cancelled` (unless it already ended)."""
        if self._cancel_requested or self.state is State.DONE:
            return
        self._cancel_requested = True
        if self.state in (State.WAITING, State.PREPARING) and self.task is not None:
            self.task.cancel()
        else:
            self._inbox.put_nowait(_CANCEL)

    def hand_back(self, reason: str) -> bool:
        """Stops and reports `handed_back` if ComfyUI has not been sent the prompt yet; True if so."""
        if self._cancel_requested or self.state not in (State.WAITING, State.PREPARING) or self.task is None:
            return False
        self._hand_back_reason = reason
        self._cancel_requested = True
        self.task.cancel()
        return True

    def abandon(self) -> None:
        """Like cancel, but reports nothing: the scheduler no longer wants this attempt."""
        self._silent = True
        self.cancel()

    # -- the run -------------------------------------------------------------------------------

    def _emit(self, event: events.RunnerEvent) -> None:
        if not self._silent:
            self._emit_to(self.key, event)

    def _finish(self, event: events.RunnerEvent) -> _Finished:
        self._copies.close()  # nothing of the run is emitted after its terminal event
        self._emit_queued()
        self._emit(event)
        self.state = State.DONE
        return _Finished()

    async def _run(self, slots: asyncio.Semaphore) -> None:
        try:
            async with slots:
                await self._execute()
        except _Finished:
            pass
        except asyncio.CancelledError:
            if not self._cancel_requested or self.state not in (State.WAITING, State.PREPARING):
                raise
            if (task := asyncio.current_task()) is not None:
                task.uncancel()
            self._finish(events.handed_back(self._hand_back_reason) if self._hand_back_reason else events.cancelled())
        except Exception as err:  # a bug must not leave the workflow running forever
            log.exception("execution %s failed unexpectedly", self.key)
            self._finish(events.failed("RunnerError", f"{type(err).__name__}: {err}"))
        finally:
            self.state = State.DONE
            self._copies.close()
            self._feed.unsubscribe(self.prompt_id)
            self._queue_reads.cancel()

    async def _execute(self) -> None:
        self.state = State.PREPARING
        try:
            prompt = parse_prompt(self.assignment.prompt_json)
        except InvalidAssignment as err:
            raise self._finish(events.failed("InvalidAssignment", err.message)) from None
        await self._wait_for_comfyui()
        if is_ui_workflow(prompt):  # an editor export: converted with this ComfyUI's node schemas
            converted, why = from_ui_format(prompt, self._schemas())
            if converted is None:
                raise self._finish(events.invalid(why, []))
            prompt = converted
        names = await upload_inputs(self.assignment, self._comfyui, self._storage)
        if not isinstance(names, dict):
            raise self._finish(names)
        self._emit(events.uploaded())
        prompt = coerce_prompt(substitute_files(prompt, names), self._schemas())
        self._tracker = PromptTracker(self.prompt_id, node_types(prompt), self._settings.progress_interval_s)
        # The websocket must be open before POST /prompt, or the first messages are lost.
        await self._wait_for_comfyui()
        self.state = State.SUBMITTING
        await self._submit(prompt)
        await self._follow()

    async def _wait_for_comfyui(self) -> None:
        if not await self._feed.wait_connected(self._settings.comfyui_unready_after_s):
            raise self._finish(events.handed_back("ComfyUI unreachable: its websocket did not open"))

    async def _submit(self, prompt: dict[str, Any]) -> None:
        self._feed.subscribe(self.prompt_id, self._inbox)
        try:
            accepted = await self._comfyui.submit_prompt(
                prompt, client_id=self._feed.client_id, prompt_id=self.prompt_id
            )
        except ComfyUIRejected as err:
            message = validation_message(err.body)
            raise self._finish(events.invalid(message, node_errors(err.body.get("node_errors")))) from None
        except ComfyUIUnreachable as err:
            if err.connect_failed:  # the prompt certainly did not reach ComfyUI
                raise self._finish(events.handed_back(f"ComfyUI unreachable: {err.message}")) from None
            raise self._finish(events.failed("ComfyUIUnreachable", err.message)) from None
        except ComfyUIServerError as err:
            raise self._finish(events.failed("ComfyUIServerError", err.text or err.message)) from None
        warnings = node_errors(accepted.node_errors)
        if warnings:
            self._emit(events.warning(node_errors_summary(warnings)))
        self.state = State.QUEUED
        self._queued_sent = False
        self._position_wanted = True  # `queued` goes out when the read answers (or when the prompt starts)
        self._position_due = self._clock() + self._settings.queue_read_grace_s

    def _position_read(self) -> None:
        answered, position = self._queue_reads.answer()
        if not answered or self.state is not State.QUEUED:
            return
        if not self._queued_sent:
            self._position = position
            self._emit_queued()
        elif position is not None and position != self._position:
            self._position = position
            self._emit(events.queued(self.prompt_id, position))
        if self._queue_reads.asked_again:
            self._position_wanted = True

    def _emit_queued(self) -> None:
        """`queued` once ComfyUI accepted the prompt, before anything else of it: with the
        position read, or 0 when the prompt got to run (or ended) before the read answered.
        A read still under way is left to answer (and be ignored): cancelling it mid-response
        would close its keep-alive connection to ComfyUI, and the next request open a new one."""
        if self._queued_sent:
            return
        self._queued_sent = True
        self._emit(events.queued(self.prompt_id, self._position or 0))

    # -- following the prompt ------------------------------------------------------------------

    async def _follow(self) -> None:
        assert self._tracker is not None
        tracker = self._tracker
        settings = self._settings
        last_heard = self._clock()
        last_remaining: int | None = None
        if not self._feed.connected:
            self._down_since = last_heard
        while True:
            self._read_position_if_wanted()
            now = self._clock()
            deadline = last_heard + settings.poll_interval_s
            if (due := tracker.next_due()) is not None:
                deadline = min(deadline, due)
            if self._position_wanted and self.state is State.QUEUED:
                deadline = min(deadline, self._position_due)
            if self._down_since is not None:
                deadline = min(deadline, self._down_since + settings.comfyui_down_timeout_s)
            item = await self._next_item(deadline - now)
            now = self._clock()
            steps: list[Step] = []
            if item is None:
                steps = tracker.due(now)
                if self._down_since is not None and now - self._down_since >= settings.comfyui_down_timeout_s:
                    await self._apply(steps)
                    if self._cancel_requested:
                        raise self._finish(events.cancelled())
                    down_for = round(now - self._down_since, 1)
                    raise self._finish(
                        events.failed("ComfyUIUnreachable", f"ComfyUI unreachable for {down_for} s mid-run")
                    )
                if now - last_heard >= settings.poll_interval_s:
                    last_heard = now
                    if self._down_since is None:
                        steps += await self._reconcile()
            elif isinstance(item, WsMessage):
                last_heard = now
                steps = tracker.feed(item.message, item.at)
            elif isinstance(item, QueueStatus):
                if self.state is State.QUEUED and item.queue_remaining != last_remaining:
                    last_remaining = item.queue_remaining
                    self._position_wanted = True
            elif item is ANSWERED:
                self._position_read()
            elif isinstance(item, FeedDown):
                self._down_since = self._down_since or now
            elif isinstance(item, FeedUp):
                self._down_since = None
                last_heard = now
                steps = await self._reconcile()
            elif item is _CANCEL:
                await self._cancel_in_comfyui()
            await self._apply(steps)

    def _read_position_if_wanted(self) -> None:
        """Asks for the position read wanted, once the inbox holds nothing more and the accepted
        prompt's grace (`queue_read_grace_s`) is over: what the websocket delivered meanwhile
        goes first, and a prompt it said started (no longer queued) needs no read."""
        if self._position_wanted and self._inbox.empty() and self._clock() >= self._position_due:
            self._position_wanted = False
            if self.state is State.QUEUED:
                self._queue_reads.request()

    async def _next_item(self, timeout_s: float) -> Any:
        """The inbox's next item, or None after `timeout_s`. An item already waiting is taken
        at once: no timer and no task per websocket message (asyncio.wait_for makes both)."""
        if not self._inbox.empty():
            return self._inbox.get_nowait()
        try:
            async with asyncio.timeout(max(0.0, timeout_s)):
                return await self._inbox.get()
        except TimeoutError:
            return None

    async def _apply(self, steps: list[Step]) -> None:
        for step in steps:
            if isinstance(step, PromptStarted):
                self._emit_queued()
                self.state = State.RUNNING
                self._emit(events.running(self.prompt_id))
            elif isinstance(step, NodesCached):
                self._emit(events.cached(step))
            elif isinstance(step, NodeStarted):
                self._emit(events.executing(step))
            elif isinstance(step, NodeProgress):
                self._emit(events.progress(step))
            elif isinstance(step, PromptFailed):
                await self._copies.settle(SETTLE_S)
                raise self._finish(events.failed_in_node(step))
            elif isinstance(step, PromptInterrupted):
                await self._copies.settle(SETTLE_S)
                raise self._finish(events.cancelled())
            elif isinstance(step, OutputsReady):
                self._copies.add(step.outputs)
            elif isinstance(step, PromptSucceeded):
                self.state = State.STORING
                self._copies.add(step.outputs)  # (those the websocket did not name: read from the history)
                failure = await self._copies.finish()
                raise self._finish(failure or events.completed())

    async def _reconcile(self) -> list[Step]:
        """Where is the prompt? Still queued/running: nothing to do. Finished: its outcome.
        Unknown to ComfyUI: it was lost (ComfyUI restarted), or it was ours to cancel."""
        assert self._tracker is not None
        try:
            queue = await self._comfyui.queue()
            if queue.holds(self.prompt_id):
                if self._cancel_requested:
                    await self._cancel_in_comfyui()
                return []
            entry = await self._comfyui.history(self.prompt_id)
        except ComfyUIUnreachable:
            self._down_since = self._down_since or self._clock()
            return []
        except ComfyUIError as err:
            log.warning("reconciling prompt %s: %s", self.prompt_id, err.message)
            return []
        steps = self._tracker.steps_from_history(entry)
        if steps:
            return steps
        if self._cancel_requested:
            raise self._finish(events.cancelled())
        if not self._tracker.started:
            raise self._finish(events.handed_back(f"ComfyUI lost prompt {self.prompt_id} before running it"))
        raise self._finish(
            events.failed(
                "ComfyUIRestarted",
                f"prompt {self.prompt_id} is neither queued nor in ComfyUI's history (ComfyUI restarted?)",
            )
        )

    async def _cancel_in_comfyui(self) -> None:
        """Pending: delete it from the queue. Running: interrupt it (the websocket ends it)."""
        try:
            if self.state is State.QUEUED:
                await self._comfyui.delete_pending([self.prompt_id])
                queue = await self._comfyui.queue()
                if self.prompt_id in queue.running:
                    await self._comfyui.interrupt(self.prompt_id)  # it started meanwhile
                elif not queue.holds(self.prompt_id):
                    assert self._tracker is not None
                    steps = self._tracker.steps_from_history(await self._comfyui.history(self.prompt_id))
                    await self._apply(steps)  # it finished meanwhile: that outcome stands
                    raise self._finish(events.cancelled())
            elif self.state is State.RUNNING:
                await self._comfyui.interrupt(self.prompt_id)
        except ComfyUIUnreachable:
            # Retried by the reconciliation once ComfyUI is back (cancel stays requested).
            self._down_since = self._down_since or self._clock()
        except ComfyUIError as err:
            log.warning("cancelling prompt %s: %s", self.prompt_id, err.message)
