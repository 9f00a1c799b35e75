"""Builders of `RunnerEvent`s: one function per event kind, from the runner's own types.

The outbox fills in workflow_id, attempt, runner_seq and time; these only set the kind.
"""

from __future__ import annotations

from collections.abc import Iterable

from comfyfleet.runner.v1 import runner_event_pb2 as ev
from comfyfleet.scheduler.v1 import workflow_pb2
from comfyfleet.storage.v1 import object_pb2

from services.runner.comfyui_messages import NodeProgress, NodesCached, NodeStarted, PromptFailed
from services.runner.prompt_graph import NodeErrorInfo

RunnerEvent = ev.RunnerEvent


def uploaded() -> RunnerEvent:
    return RunnerEvent(uploaded=ev.Uploaded())


def queued(prompt_id: str, queue_number: int) -> RunnerEvent:
    return RunnerEvent(queued=ev.Queued(prompt_id=prompt_id, queue_number=queue_number))


def running(prompt_id: str) -> RunnerEvent:
    return RunnerEvent(running=ev.Running(prompt_id=prompt_id))


def executing(step: NodeStarted) -> RunnerEvent:
    return RunnerEvent(executing=ev.Executing(node_id=step.node_id, node_type=step.node_type))


def progress(step: NodeProgress) -> RunnerEvent:
    return RunnerEvent(
        progress=ev.Progress(node_id=step.node_id, node_type=step.node_type, value=step.value, max=step.max)
    )


def output_stored(node_id: str, filename: str, ref: object_pb2.ObjectRef) -> RunnerEvent:
    return RunnerEvent(output_stored=ev.OutputStored(node_id=node_id, filename=filename, object=ref))


def completed() -> RunnerEvent:
    return RunnerEvent(completed=ev.Completed())


def failed(
    exception_type: str,
    exception_message: str,
    *,
    node_id: str = "",
    node_type: str = "",
    traceback: Iterable[str] = (),
) -> RunnerEvent:
    failure = workflow_pb2.Failure(
        node_id=node_id,
        node_type=node_type,
        exception_type=exception_type,
        exception_message=exception_message,
        traceback=list(traceback),
    )
    return RunnerEvent(failed=ev.Failed(failure=failure))


def failed_in_node(step: PromptFailed) -> RunnerEvent:
    return failed(
        step.exception_type,
        step.exception_message,
        node_id=step.node_id,
        node_type=step.node_type,
        traceback=step.traceback,
    )


def invalid(message: str, errors: Iterable[NodeErrorInfo]) -> RunnerEvent:
    node_errors = [
        workflow_pb2.NodeError(
            node_id=e.node_id,
            class_type=e.class_type,
            type=e.type,
            message=e.message,
            details=e.details,
            input_name=e.input_name,
        )
        for e in errors
    ]
    return RunnerEvent(invalid=ev.Invalid(message=message, node_errors=node_errors))


def cancelled() -> RunnerEvent:
    return RunnerEvent(cancelled=ev.Cancelled())


def handed_back(reason: str) -> RunnerEvent:
    return RunnerEvent(handed_back=ev.HandedBack(reason=reason))


def warning(message: str) -> RunnerEvent:
    return RunnerEvent(log=ev.Log(level=workflow_pb2.LOG_LEVEL_WARNING, message=message))


def cached(step: NodesCached) -> RunnerEvent:
    nodes = ", ".join(step.node_ids)
    message = f"served from ComfyUI's cache: node(s) {nodes}"
    return RunnerEvent(log=ev.Log(level=workflow_pb2.LOG_LEVEL_INFO, message=message))
