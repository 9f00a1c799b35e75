"""Order of service and shared runners in place(pending, fleet), one table per rule.

Order: priority (high 3, normal 2, low 1) first; within a priority, round-robin across users
(rank = position in the user's own FIFO queue; round r serves every user's r-th workflow),
users within a round by the arrival of their oldest workflow; within a user, FIFO by arrival.
The comments show the order each case produces and the capacity it meets.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from services.scheduler.core.placement import (
    Decisions,
    PendingWorkflow,
    Priority,
    Reason,
    RunnerSnapshot,
    place,
    service_order,
)

ALICE, BOB, CAROL = "alice", "bob", "carol"
HIGH, NORMAL, LOW = Priority.HIGH, Priority.NORMAL, Priority.LOW
UNRESOLVABLE, UNSCHEDULABLE = Reason.UNRESOLVABLE, Reason.UNSCHEDULABLE


def wf(id: str, *tags: str, user: str = ALICE, priority: int = NORMAL, at: float = 0.0,
       shared: bool = False) -> PendingWorkflow:
    return PendingWorkflow(id, user, frozenset(tags), priority, at, shared)


def runner(id: str, *tags: str, user: str = ALICE, slots: int = 1, in_flight: int = 0, shared: bool = False,
           last: int = 0) -> RunnerSnapshot:
    return RunnerSnapshot(id, user, frozenset(tags), slots, in_flight, last_assigned=last, shared=shared)


@dataclass
class Case:
    name: str
    pending: list[PendingWorkflow]
    fleet: list[RunnerSnapshot]
    bindings: list[tuple[str, str]] = field(default_factory=list)
    unplaced: dict[str, Reason] = field(default_factory=dict)


PRIORITY = [
    Case("high before normal before low, whatever the arrival",
         [wf("low", priority=LOW, at=1), wf("normal", at=2), wf("high", priority=HIGH, at=3)],
         # order: high (3), normal (2), low (1); 2 slots -> high and normal placed, low waits
         [runner("r1", slots=2)],
         [("high", "r1"), ("normal", "r1")], {"low": UNSCHEDULABLE}),
    Case("FIFO within a priority: the earlier arrival first, not the order given",
         [wf("second", at=20), wf("first", at=10), wf("third", at=30)],
         # arrival 10 < 20 < 30; one slot -> first
         [runner("r1")],
         [("first", "r1")], {"second": UNSCHEDULABLE, "third": UNSCHEDULABLE}),
    Case("a high priority workflow that cannot run does not block a normal one that can",
         [wf("h", "tpu", priority=HIGH, at=1), wf("n", at=2)],
         # h: no tpu runner (unresolvable); n takes r1
         [runner("r1")],
         [("n", "r1")], {"h": UNRESOLVABLE}),
    Case("priority beats fairness: bob's high goes before alice's older normal",
         [wf("a1", at=1), wf("b1", user=BOB, priority=HIGH, at=5)],
         # b1 (high) first; both users own a 1-slot runner, so both still run
         [runner("ra"), runner("rb", user=BOB)],
         [("b1", "rb"), ("a1", "ra")]),
    Case("priority decides who gets the last slot of a shared runner",
         [wf("a1", at=1, shared=True), wf("b1", user=BOB, priority=HIGH, at=5, shared=True)],
         # one shared slot (carol's runner): b1 (high) takes it, a1 waits
         [runner("s1", user=CAROL, shared=True)],
         [("b1", "s1")], {"a1": UNSCHEDULABLE}),
]

FAIRNESS = [
    Case("two users, one runner: alice's backlog does not starve bob's single workflow",
         [wf("a1", at=1), wf("a2", at=2), wf("a3", at=3), wf("a4", at=4), wf("b1", user=BOB, at=5, shared=True)],
         # round 0: a1 (alice's head, arrival 1), b1 (bob's head, arrival 5); round 1: a2; round 2: a3 ...
         # alice's shared runner has 2 slots -> a1, b1; a2..a4 wait
         [runner("r1", slots=2, shared=True)],
         [("a1", "r1"), ("b1", "r1")], {"a2": UNSCHEDULABLE, "a3": UNSCHEDULABLE, "a4": UNSCHEDULABLE}),
    Case("the user whose oldest workflow waited longest goes first in each round",
         [wf("a1", at=5), wf("a2", at=6), wf("b1", user=BOB, at=1, shared=True),
          wf("b2", user=BOB, at=2, shared=True)],
         # heads: bob 1 < alice 5 -> round 0: b1, a1; round 1: b2, a2; 3 slots -> b1, a1, b2
         [runner("r1", slots=3, shared=True)],
         [("b1", "r1"), ("a1", "r1"), ("b2", "r1")], {"a2": UNSCHEDULABLE}),
    Case("each user's own runner: fairness never moves work onto another user's runner",
         [wf("a1", at=1), wf("a2", at=2), wf("b1", user=BOB, at=3)],
         # round 0: a1 -> ra, b1 -> rb; round 1: a2 finds ra full, rb is bob's -> unschedulable
         [runner("ra"), runner("rb", user=BOB)],
         [("a1", "ra"), ("b1", "rb")], {"a2": UNSCHEDULABLE}),
]

SHARED = [
    Case("a shared runner serves another user who may use shared runners",
         [wf("b1", "gpu", user=BOB, shared=True)], [runner("s1", "gpu", shared=True)], [("b1", "s1")]),
    Case("but not a user whose tier does not allow shared runners",
         [wf("b1", "gpu", user=BOB)], [runner("s1", "gpu", shared=True)], unplaced={"b1": UNRESOLVABLE}),
    Case("a shared runner still serves its owner",
         [wf("a1")], [runner("s1", shared=True)], [("a1", "s1")]),
    Case("a private runner never serves another user, even one who may use shared runners",
         [wf("b1", user=BOB, shared=True)], [runner("r1")], unplaced={"b1": UNRESOLVABLE}),
    Case("own and shared runners compete on score",
         [wf("b1", user=BOB, shared=True)],
         # rb (bob's): 0/2 = 0   s1 (shared): 1/2 = 0.5 -> s1, the most allocated
         [runner("rb", user=BOB, slots=2), runner("s1", slots=2, in_flight=1, shared=True)],
         [("b1", "s1")]),
    Case("a full shared runner: unschedulable",
         [wf("b1", user=BOB, shared=True)], [runner("s1", in_flight=1, shared=True)], unplaced={"b1": UNSCHEDULABLE}),
    Case("tags still filter shared runners",
         [wf("b1", "h100", user=BOB, shared=True)], [runner("s1", "a100", shared=True)],
         unplaced={"b1": UNRESOLVABLE}),
]


@pytest.mark.parametrize("case", PRIORITY, ids=lambda c: c.name)
def test_priority(case: Case) -> None:
    assert place(case.pending, case.fleet) == Decisions(case.bindings, case.unplaced)


@pytest.mark.parametrize("case", FAIRNESS, ids=lambda c: c.name)
def test_fairness(case: Case) -> None:
    assert place(case.pending, case.fleet) == Decisions(case.bindings, case.unplaced)


@pytest.mark.parametrize("case", SHARED, ids=lambda c: c.name)
def test_shared_runners(case: Case) -> None:
    assert place(case.pending, case.fleet) == Decisions(case.bindings, case.unplaced)


def test_service_order_interleaves_users_within_each_priority() -> None:
    pending = [
        wf("a1", at=1), wf("a2", at=2), wf("a3", at=3),
        wf("b1", user=BOB, at=4), wf("b2", user=BOB, at=9),
        wf("c1", user=CAROL, at=0, priority=LOW),
        wf("ah", at=7, priority=HIGH), wf("bh", user=BOB, at=6, priority=HIGH),
    ]
    # high: heads bob 6 < alice 7 -> bh, ah
    # normal: round 0 a1 (head 1), b1 (head 4); round 1 a2, b2; round 2 a3
    # low: c1
    assert [w.id for w in service_order(pending)] == ["bh", "ah", "a1", "b1", "a2", "b2", "a3", "c1"]


def test_ten_thousand_queued_do_not_starve_a_single_one() -> None:
    backlog = [wf(f"a{i:05}", at=i) for i in range(10_000)]
    late = wf("b1", user=BOB, at=10_000, shared=True)
    # alice's shared runner, 2 of its 3 slots free: round 0 is a00000 then b1 -> b1 gets
    # the second slot although 10,000 workflows arrived before it
    decisions = place([*backlog, late], [runner("r1", slots=3, in_flight=1, shared=True)])
    assert decisions.bindings == [("a00000", "r1"), ("b1", "r1")]
    assert len(decisions.unplaced) == 9_999


ACROSS_PASSES = [
    # (name, pending, last_served, the one workflow a single free slot goes to)
    ("the user served least recently goes first, although the other's head is older",
     [wf("a2", at=2, shared=True), wf("a3", at=3, shared=True), wf("b1", user=BOB, at=9, shared=True)],
     # alice served at turn 7, bob never (0): round 0 = b1 (0), a2 (7) -> b1
     {ALICE: 7}, "b1"),
    ("served at all beats served more recently",
     [wf("a2", at=2, shared=True), wf("b1", user=BOB, at=1, shared=True)],
     # alice 3, bob 5: alice was served longer ago -> a2, although b1 arrived first
     {ALICE: 3, BOB: 5}, "a2"),
    ("equal turns: the oldest head first",
     [wf("a2", at=2, shared=True), wf("b1", user=BOB, at=1, shared=True)],
     {}, "b1"),
    ("priority still comes first",
     [wf("a2", at=2, priority=HIGH, shared=True), wf("b1", user=BOB, at=1, shared=True)],
     # bob was never served, but alice's is high priority
     {ALICE: 9}, "a2"),
]


@pytest.mark.parametrize(("pending", "last_served", "winner"), [c[1:] for c in ACROSS_PASSES],
                         ids=[c[0] for c in ACROSS_PASSES])
def test_fairness_carries_over_between_passes(
    pending: list[PendingWorkflow], last_served: dict[str, int], winner: str
) -> None:
    decisions = place(pending, [runner("r1", user=CAROL, shared=True)], last_served)
    assert decisions.bindings == [(winner, "r1")]


def test_one_slot_at_a_time_alternates_between_users() -> None:
    # Each pass frees one slot; the caller records who was served, as Execution does.
    backlog = [wf(f"a{i}", at=i, shared=True) for i in range(6)]
    waiting = [*backlog, wf("b1", user=BOB, at=10, shared=True), wf("b2", user=BOB, at=11, shared=True)]
    last_served: dict[str, int] = {}
    served = []
    for turn in range(1, 6):
        (workflow_id, _), = place(waiting, [runner("r1", user=CAROL, shared=True)], last_served).bindings
        served.append(workflow_id)
        waiting = [w for w in waiting if w.id != workflow_id]
        last_served[{"a": ALICE, "b": BOB}[workflow_id[0]]] = turn
    # a0 (oldest head, nobody served yet), then b1 (bob never served), a1, b2, a2
    assert served == ["a0", "b1", "a1", "b2", "a2"]
