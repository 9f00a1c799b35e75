"""The workflow state machine: the only place that decides whether a status may change.

    accepted -> uploaded -> queued -> running -> completed
         \\________\\__________\\_________\\____-> failed | cancelled | invalid
    uploaded/queued/running -> accepted        (requeue after the runner was lost)

`queued -> queued` is allowed: the queue position changed.
"""

from __future__ import annotations

from enum import StrEnum

from services.scheduler.errors import IllegalTransition


class Status(StrEnum):
    ACCEPTED = "accepted"
    UPLOADED = "uploaded"
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INVALID = "invalid"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED, Status.INVALID})
_ENDINGS = frozenset({Status.FAILED, Status.CANCELLED})

TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.ACCEPTED: frozenset({Status.UPLOADED, Status.QUEUED, Status.RUNNING, Status.INVALID}) | _ENDINGS,
    Status.UPLOADED: frozenset({Status.QUEUED, Status.RUNNING, Status.INVALID, Status.ACCEPTED}) | _ENDINGS,
    Status.QUEUED: frozenset({Status.QUEUED, Status.RUNNING, Status.COMPLETED, Status.ACCEPTED}) | _ENDINGS,
    Status.RUNNING: frozenset({Status.COMPLETED, Status.ACCEPTED}) | _ENDINGS,
    Status.COMPLETED: frozenset(),
    Status.FAILED: frozenset(),
    Status.CANCELLED: frozenset(),
    Status.INVALID: frozenset(),
}


def can_transition(current: Status, target: Status) -> bool:
    return target in TRANSITIONS[current]


def transition(current: Status, target: Status) -> Status:
    """Returns `target` if the move is allowed, else raises IllegalTransition."""
    if not can_transition(current, target):
        raise IllegalTransition(f"a {current.value} workflow cannot become {target.value}")
    return target
