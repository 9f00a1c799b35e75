"""Scheduler errors: the shared tree (services.common.errors) with scheduler reasons.

    ComfyfleetError
    ├── InvalidArgument  ── InvalidWorkflow (reason INVALID_WORKFLOW), InvalidPlaceholder
    ├── Unauthenticated
    ├── NotFound         ── WorkflowNotFound (reason WORKFLOW_NOT_FOUND)
    └── Conflict         ── IllegalTransition (reason ILLEGAL_TRANSITION), AlreadyTerminal,
                            WorkflowExists (reason WORKFLOW_EXISTS)
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
    "Unauthenticated",
    "Unavailable",
    "WorkflowExists",
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
