"""place(pending, fleet): filter -> score -> select, one table per rule.

Score = in_flight / slots of a runner that passes the filter; the highest wins (pack busy
runners first); ties go to the least recently assigned (smallest last_assigned), then to
the smallest id. The comments show the arithmetic of each case.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from services.scheduler.core.placement import Decisions, PendingWorkflow, Reason, RunnerSnapshot, place

ALICE, BOB = "alice", "bob"
UNRESOLVABLE, UNSCHEDULABLE = Reason.UNRESOLVABLE, Reason.UNSCHEDULABLE


def wf(id: str, *tags: str, user: str = ALICE) -> PendingWorkflow:
    return PendingWorkflow(id, user, frozenset(tags))


def runner(
    id: str,
    *tags: str,
    user: str = ALICE,
    slots: int = 1,
    in_flight: int = 0,
    enabled: bool = True,
    connected: bool = True,
    last: int = 0,
) -> RunnerSnapshot:
    return RunnerSnapshot(id, user, frozenset(tags), slots, in_flight, enabled, connected, last)


@dataclass
class Case:
    name: str
    pending: list[PendingWorkflow]
    fleet: list[RunnerSnapshot]
    bindings: list[tuple[str, str]] = field(default_factory=list)
    unplaced: dict[str, Reason] = field(default_factory=dict)


def check(case: Case) -> None:
    assert place(case.pending, case.fleet) == Decisions(case.bindings, case.unplaced)


TAGS = [
    Case("untagged workflow runs on an untagged runner", [wf("w1")], [runner("r1")], [("w1", "r1")]),
    Case("untagged workflow runs on a tagged runner of its owner", [wf("w1")], [runner("r1", "gpu", "a100")],
         [("w1", "r1")]),
    Case("workflow tags are a subset of the runner's", [wf("w1", "gpu")], [runner("r1", "gpu", "a100")],
         [("w1", "r1")]),
    Case("every tag must be present", [wf("w1", "gpu", "h100")], [runner("r1", "gpu", "a100")],
         unplaced={"w1": UNRESOLVABLE}),
    Case("an untagged runner does not take a tagged workflow", [wf("w1", "gpu")], [runner("r1")],
         unplaced={"w1": UNRESOLVABLE}),
    Case("tags are case-sensitive", [wf("w1", "GPU")], [runner("r1", "gpu")], unplaced={"w1": UNRESOLVABLE}),
    Case("only the runner with all tags qualifies, however busy the others are",
         [wf("w1", "gpu", "sdxl")],
         # r1 has gpu only, r2 has sdxl only: neither is a candidate although both are free.
         [runner("r1", "gpu", slots=4), runner("r2", "sdxl", slots=4), runner("r3", "gpu", "sdxl", "x")],
         [("w1", "r3")]),
    Case("no runner at all", [wf("w1"), wf("w2", "gpu")], [], unplaced={"w1": UNRESOLVABLE, "w2": UNRESOLVABLE}),
]

OWNERS = [
    Case("another user's free runner is never used", [wf("w1", user=BOB)], [runner("r1")],
         unplaced={"w1": UNRESOLVABLE}),
    Case("another user's runner with the tags is never used", [wf("w1", "gpu", user=BOB)],
         [runner("r1", "gpu"), runner("r2", "gpu", user="carol")], unplaced={"w1": UNRESOLVABLE}),
    Case("each owner's workflows go to that owner's runners",
         [wf("a1"), wf("b1", user=BOB), wf("b2", user=BOB)],
         # bob's r2 has 2 slots: b1 then b2 both fit; alice's r1 takes a1.
         [runner("r1"), runner("r2", user=BOB, slots=2)],
         [("a1", "r1"), ("b1", "r2"), ("b2", "r2")]),
    Case("a busy own runner: unschedulable, not a reason to borrow a free foreign one",
         [wf("w1")], [runner("r1", in_flight=1), runner("r2", user=BOB)], unplaced={"w1": UNSCHEDULABLE}),
]

AVAILABILITY = [
    Case("disabled", [wf("w1", "gpu")], [runner("r1", "gpu", enabled=False)], unplaced={"w1": UNSCHEDULABLE}),
    Case("offline", [wf("w1", "gpu")], [runner("r1", "gpu", connected=False)], unplaced={"w1": UNSCHEDULABLE}),
    # in_flight 2 of 2 slots: no room
    Case("full", [wf("w1", "gpu")], [runner("r1", "gpu", slots=2, in_flight=2)], unplaced={"w1": UNSCHEDULABLE}),
    # over-full after a reconnect with more held than slots: still no room
    Case("over full", [wf("w1")], [runner("r1", slots=1, in_flight=3)], unplaced={"w1": UNSCHEDULABLE}),
    Case("zero slots", [wf("w1")], [runner("r1", slots=0)], unplaced={"w1": UNSCHEDULABLE}),
    Case("one disabled, one offline, one full: still unschedulable, not unresolvable", [wf("w1", "gpu")],
         [runner("r1", "gpu", enabled=False), runner("r2", "gpu", connected=False),
          runner("r3", "gpu", in_flight=1)],
         unplaced={"w1": UNSCHEDULABLE}),
    Case("the one available runner among unavailable ones", [wf("w1", "gpu")],
         [runner("r1", "gpu", enabled=False), runner("r2", "gpu", connected=False), runner("r3", "gpu", slots=2),
          runner("r4", "gpu", in_flight=1)],
         [("w1", "r3")]),
    Case("unschedulable and unresolvable side by side", [wf("w1", "gpu"), wf("w2", "tpu")],
         [runner("r1", "gpu", in_flight=1)], unplaced={"w1": UNSCHEDULABLE, "w2": UNRESOLVABLE}),
]

SCORE = [
    Case("most allocated first",
         [wf("w1")],
         # r1: 1/4 = 0.25   r2: 3/4 = 0.75   r3: 0/1 = 0   -> r2
         [runner("r1", slots=4, in_flight=1), runner("r2", slots=4, in_flight=3), runner("r3", slots=1)],
         [("w1", "r2")]),
    Case("the fraction counts, not the number in flight",
         [wf("w1")],
         # r1: 3/8 = 0.375   r2: 1/2 = 0.5   -> r2, although r1 runs more
         [runner("r1", slots=8, in_flight=3), runner("r2", slots=2, in_flight=1)],
         [("w1", "r2")]),
    Case("a full runner scores highest but is filtered out first",
         [wf("w1")],
         # r1: 2/2 = 1.0 (full, skipped)   r2: 1/3 = 0.33   r3: 0/3 = 0   -> r2
         [runner("r1", slots=2, in_flight=2), runner("r2", slots=3, in_flight=1), runner("r3", slots=3)],
         [("w1", "r2")]),
    Case("equal fractions tie; the least recently assigned wins",
         [wf("w1")],
         # r1: 1/2 = 0.5, last 9   r2: 2/4 = 0.5, last 4   -> r2 (assigned longer ago)
         [runner("r1", slots=2, in_flight=1, last=9), runner("r2", slots=4, in_flight=2, last=4)],
         [("w1", "r2")]),
    Case("never assigned (0) counts as longest ago",
         [wf("w1")],
         # r1: 0/1, last 3   r2: 0/1, last 0   -> r2
         [runner("r1", last=3), runner("r2", last=0)],
         [("w1", "r2")]),
    Case("then the smallest id",
         [wf("w1")],
         # rb and ra: 1/3 each, last 5 each -> ra
         [runner("rb", slots=3, in_flight=1, last=5), runner("ra", slots=3, in_flight=1, last=5)],
         [("w1", "ra")]),
    Case("the tag filter runs before the score",
         [wf("w1", "gpu")],
         # r1 (no gpu): 3/4 = 0.75 is not a candidate   r2: 0/4 = 0   -> r2
         [runner("r1", slots=4, in_flight=3), runner("r2", "gpu", slots=4)],
         [("w1", "r2")]),
]

PASS = [
    Case("one pass fills a runner and never exceeds its slots",
         [wf("w1"), wf("w2"), wf("w3"), wf("w4")],
         # r1 slots 3: w1 (0/3 -> 1/3), w2 (1/3 -> 2/3), w3 (2/3 -> 3/3 full); w4 finds no room
         [runner("r1", slots=3)],
         [("w1", "r1"), ("w2", "r1"), ("w3", "r1")], {"w4": UNSCHEDULABLE}),
    Case("bin-packing within one pass",
         [wf("w1"), wf("w2"), wf("w3")],
         # w1: r1 0/2, r2 0/2, both never assigned -> r1 (id);  r1 now 1/2
         # w2: r1 1/2 = 0.5 beats r2 0/2 = 0 -> r1;  r1 now 2/2, full
         # w3: r1 full, r2 0/2 -> r2
         [runner("r1", slots=2), runner("r2", slots=2)],
         [("w1", "r1"), ("w2", "r1"), ("w3", "r2")]),
    Case("a tie between the runners left once the first is full",
         [wf("w1"), wf("w2"), wf("w3")],
         # w1: r1 0/1 last 0, r2 0/1 last 7, r3 0/1 last 3 -> r1 (never assigned); r1 now full
         # w2: r2 0/1 last 7, r3 0/1 last 3 -> r3 (assigned longer ago); r3 now full
         # w3: r2
         [runner("r1"), runner("r2", last=7), runner("r3", last=3)],
         [("w1", "r1"), ("w2", "r3"), ("w3", "r2")]),
    Case("the order of pending is the order of service",
         [wf("late", "gpu"), wf("early", "gpu")],
         # one gpu slot: the first in the list gets it, whatever its id
         [runner("r1", "gpu")],
         [("late", "r1")], {"early": UNSCHEDULABLE}),
    Case("a workflow that cannot be placed does not block the ones behind it",
         [wf("w1", "tpu"), wf("w2", "gpu"), wf("w3")],
         # w1: no tpu runner; w2: r1; w3: r1 is full (1/1), r2 0/1 -> r2
         [runner("r1", "gpu"), runner("r2")],
         [("w2", "r1"), ("w3", "r2")], {"w1": UNRESOLVABLE}),
    Case("an earlier workflow's reservation can make a later one unschedulable",
         [wf("w1"), wf("w2", "gpu")],
         # w1 (untagged) takes the only slot of the only runner, r1 (gpu); w2 finds r1 full
         [runner("r1", "gpu")],
         [("w1", "r1")], {"w2": UNSCHEDULABLE}),
]


@pytest.mark.parametrize("case", TAGS, ids=lambda c: c.name)
def test_tags(case: Case) -> None:
    check(case)


@pytest.mark.parametrize("case", OWNERS, ids=lambda c: c.name)
def test_owner_isolation(case: Case) -> None:
    check(case)


@pytest.mark.parametrize("case", AVAILABILITY, ids=lambda c: c.name)
def test_unavailable_runners(case: Case) -> None:
    check(case)


@pytest.mark.parametrize("case", SCORE, ids=lambda c: c.name)
def test_score(case: Case) -> None:
    check(case)


@pytest.mark.parametrize("case", PASS, ids=lambda c: c.name)
def test_one_pass(case: Case) -> None:
    check(case)


def test_nothing_pending() -> None:
    assert place([], [runner("r1")]) == Decisions()


def test_the_inputs_are_not_changed() -> None:
    fleet = [runner("r1", slots=2)]
    pending = [wf("w1"), wf("w2")]
    place(pending, fleet)
    assert fleet == [runner("r1", slots=2)]  # frozen snapshots; the pass keeps its own counts
    assert place(pending, fleet).bindings == [("w1", "r1"), ("w2", "r1")]


def test_a_large_fleet_is_packed_without_exceeding_any_runner() -> None:
    # 50 runners with 1..4 slots; 300 workflows: exactly sum(slots) are placed.
    fleet = [runner(f"r{i:02}", "gpu", slots=i % 4 + 1, in_flight=i % 2) for i in range(50)]
    # slots: 13 runners with 1 and 2, 12 with 3 and 4 -> 13*1 + 13*2 + 12*3 + 12*4 = 123; 25 odd ids hold 1
    free = sum(r.slots - r.in_flight for r in fleet)
    assert free == 123 - 25
    decisions = place([wf(f"w{i:03}", "gpu") for i in range(300)], fleet)
    assert len(decisions.bindings) == free
    per_runner: dict[str, int] = {}
    for _, runner_id in decisions.bindings:
        per_runner[runner_id] = per_runner.get(runner_id, 0) + 1
    for r in fleet:
        assert per_runner.get(r.id, 0) == r.slots - r.in_flight
    assert set(decisions.unplaced.values()) == {UNSCHEDULABLE}
    assert len(decisions.unplaced) == 300 - free
