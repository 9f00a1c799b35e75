"""The workflow state machine: every move it allows, and that nothing else gets through.

The expected table is written out here by hand (not read from TRANSITIONS), so a change to
the product's table has to be made in both places on purpose.
"""

from __future__ import annotations

import itertools

import pytest

from services.scheduler.core.state import TERMINAL, Status, can_transition, transition
from services.scheduler.errors import Conflict, IllegalTransition

A, U, Q, R = Status.ACCEPTED, Status.UPLOADED, Status.QUEUED, Status.RUNNING
DONE, FAIL, CANC, INV = Status.COMPLETED, Status.FAILED, Status.CANCELLED, Status.INVALID

ALLOWED: set[tuple[Status, Status]] = {
    # forward along the happy path (a runner may skip steps it did not observe)
    (A, U), (A, Q), (A, R),
    (U, Q), (U, R),
    (Q, R), (Q, DONE),
    (R, DONE),
    # queue position changed
    (Q, Q),
    # ComfyUI's validation rejects a prompt before it is queued
    (A, INV), (U, INV),
    # failure or cancel from anywhere unfinished
    (A, FAIL), (U, FAIL), (Q, FAIL), (R, FAIL),
    (A, CANC), (U, CANC), (Q, CANC), (R, CANC),
    # requeue after the runner was lost
    (U, A), (Q, A), (R, A),
}

ALL_PAIRS = list(itertools.product(Status, Status))


@pytest.mark.parametrize(("current", "target"), sorted(ALLOWED), ids=lambda s: s.value)
def test_allowed_moves(current: Status, target: Status) -> None:
    assert can_transition(current, target)
    assert transition(current, target) is target


FORBIDDEN = sorted(set(ALL_PAIRS) - ALLOWED)


@pytest.mark.parametrize(("current", "target"), FORBIDDEN, ids=lambda s: s.value)
def test_every_other_move_is_refused_with_a_message_naming_both_states(current: Status, target: Status) -> None:
    assert not can_transition(current, target)
    with pytest.raises(IllegalTransition) as caught:
        transition(current, target)
    assert caught.value.message == f"a {current.value} workflow cannot become {target.value}"
    assert caught.value.reason == "ILLEGAL_TRANSITION"
    assert isinstance(caught.value, Conflict)  # -> FAILED_PRECONDITION for the caller


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (A, DONE),  # nothing ran, nothing can be complete
        (A, A),  # an unplaced workflow is not "requeued"
        (R, Q),  # ComfyUI does not put a running prompt back in its queue
        (R, U),
        (Q, U),
        (R, R),  # a repeated "running" is a runner bug, not a new state
        (Q, INV),  # once queued, ComfyUI's validation has passed
        (R, INV),
        (DONE, A),  # a finished workflow is never requeued
        (CANC, R),
        (FAIL, DONE),
    ],
    ids=lambda s: s.value,
)
def test_representative_forbidden_moves(current: Status, target: Status) -> None:
    # A guard against the hand-written table above being edited to match a bad product table.
    assert (current, target) not in ALLOWED
    assert not can_transition(current, target)


@pytest.mark.parametrize("terminal", sorted(TERMINAL), ids=lambda s: s.value)
def test_terminal_states_have_no_way_out(terminal: Status) -> None:
    assert terminal.terminal
    assert [t for t in Status if can_transition(terminal, t)] == []


def test_exactly_four_terminal_states() -> None:
    assert {s for s in Status if s.terminal} == {DONE, FAIL, CANC, INV}
    assert not any(s.terminal for s in (A, U, Q, R))


def test_status_values_are_the_public_strings() -> None:
    assert [s.value for s in Status] == [
        "accepted", "uploaded", "queued", "running", "completed", "failed", "cancelled", "invalid",
    ]
