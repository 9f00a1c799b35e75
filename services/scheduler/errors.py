"""Scheduler errors: the shared tree (services.common.errors) with scheduler reasons.

    ComfyfleetError
    ├── InvalidArgument  ── InvalidWorkflow (reason INVALID_WORKFLOW), InvalidPlaceholder
    ├── Unauthenticated
    ├── NotFound         ── WorkflowNotFound (reason WORKFLOW_NOT_FOUND),
    │                       RunnerNotFound (reason RUNNER_NOT_FOUND),
    │                       TemplateNotFound (reason TEMPLATE_NOT_FOUND)
    └── Conflict         ── IllegalTransition (reason ILLEGAL_TRANSITION), AlreadyTerminal,
                            WorkflowExists (reason WORKFLOW_EXISTS),
                            WorkflowNotFinished (reason WORKFLOW_NOT_FINISHED)
"""

from __future__ import annotations

from services.common.errors import (
    ComfyfleetError,
    Conflict,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)

__all__ = [
    "AlreadyTerminal",
    "ComfyfleetError",
    "Conflict",
    "IllegalTransition",
    "InvalidArgument",
    "InvalidPlaceholder",
    "InvalidWorkflow",
    "NotFound",
    "PermissionDenied",
    "RunnerNotFound",
    "TemplateNotFound",
    "Unauthenticated",
    "Unavailable",
    "WorkflowExists",
    "WorkflowNotFinished",
    "WorkflowNotFound",
]


class InvalidWorkflow(InvalidArgument):
    default_reason = "INVALID_WORKFLOW"


class InvalidPlaceholder(InvalidArgument):
    default_reason = "INVALID_PLACEHOLDER"


class WorkflowNotFound(NotFound):
    default_reason = "WORKFLOW_NOT_FOUND"

    def __init__(self, workflow_id: str) -> None:
        super().__init__("workflow not found", details=[{"id": workflow_id}])


class IllegalTransition(Conflict):
    default_reason = "ILLEGAL_TRANSITION"


class AlreadyTerminal(Conflict):
    default_reason = "WORKFLOW_TERMINAL"


class WorkflowExists(Conflict):
    """CreateWorkflow with an id that is already taken (the caller chooses ids)."""

    default_reason = "WORKFLOW_EXISTS"

    def __init__(self, workflow_id: str) -> None:
        super().__init__("a workflow with this id already exists", details=[{"id": workflow_id}])


class WorkflowNotFinished(Conflict):
    """Deleting a workflow that has not reached a terminal state."""

    default_reason = "WORKFLOW_NOT_FINISHED"

    def __init__(self, workflow_id: str, status: str) -> None:
        super().__init__(f"workflow is {status}; only a finished workflow can be deleted",
                         details=[{"id": workflow_id, "status": status}])


class RunnerNotFound(NotFound):
    default_reason = "RUNNER_NOT_FOUND"

    def __init__(self, runner_id: str) -> None:
        super().__init__("runner not found", details=[{"id": runner_id}])


class TemplateNotFound(NotFound):
    default_reason = "TEMPLATE_NOT_FOUND"

    def __init__(self, template_id: str) -> None:
        super().__init__("template not found", details=[{"id": template_id}])
