"""Placement: which pending workflow runs on which runner. Pure: no I/O, no clock.

    place(pending, fleet) -> Decisions

Filter -> score -> select, one workflow at a time in the order given (the caller orders by
priority then age):
  filter: same owner, the workflow's tags are a subset of the runner's tags, runner enabled
          and connected, a free slot;
  score:  most-allocated first, in_flight / slots (pack busy runners, keep whole runners free
          for what needs them); ties by least recently assigned, then by id;
  select: the best; its in_flight goes up for the rest of the pass.
Runners are indexed by (owner, tag), so a decision looks only at runners that carry the
workflow's rarest tag. Workflows left over get a reason: UNRESOLVABLE (no runner could ever
match) or UNSCHEDULABLE (matches exist, all busy, offline or disabled).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from enum import StrEnum


class Reason(StrEnum):
    UNRESOLVABLE = "unresolvable"
    UNSCHEDULABLE = "unschedulable"


@dataclass(frozen=True)
class PendingWorkflow:
    id: str
    user_id: str
    tags: frozenset[str]


@dataclass(frozen=True)
class RunnerSnapshot:
    id: str
    user_id: str
    tags: frozenset[str]
    slots: int
    in_flight: int
    enabled: bool = True
    connected: bool = True
    # Monotonic counter of the last assignment (smaller = longer ago); 0 = never.
    last_assigned: int = 0


@dataclass
class Decisions:
    bindings: list[tuple[str, str]] = field(default_factory=list)
    unplaced: dict[str, Reason] = field(default_factory=dict)


def place(pending: list[PendingWorkflow], fleet: list[RunnerSnapshot]) -> Decisions:
    by_tag: dict[tuple[str, str], list[RunnerSnapshot]] = defaultdict(list)
    by_user: dict[str, list[RunnerSnapshot]] = defaultdict(list)
    for r in fleet:
        by_user[r.user_id].append(r)
        for tag in r.tags:
            by_tag[(r.user_id, tag)].append(r)
    in_flight = {r.id: r.in_flight for r in fleet}
    last = {r.id: r.last_assigned for r in fleet}
    counter = max(last.values(), default=0)

    decisions = Decisions()
    for wf in pending:
        if wf.tags:
            rarest = min(wf.tags, key=lambda t: len(by_tag.get((wf.user_id, t), ())))
            candidates = [r for r in by_tag.get((wf.user_id, rarest), ()) if wf.tags <= r.tags]
        else:
            candidates = by_user.get(wf.user_id, [])
        if not candidates:
            decisions.unplaced[wf.id] = Reason.UNRESOLVABLE
            continue
        best: RunnerSnapshot | None = None
        best_key: tuple[float, int, str] | None = None
        for r in candidates:
            if not (r.enabled and r.connected and in_flight[r.id] < r.slots):
                continue
            key = (-in_flight[r.id] / r.slots, last[r.id], r.id)
            if best_key is None or key < best_key:
                best, best_key = r, key
        if best is None:
            decisions.unplaced[wf.id] = Reason.UNSCHEDULABLE
            continue
        in_flight[best.id] += 1
        counter += 1
        last[best.id] = counter
        decisions.bindings.append((wf.id, best.id))
    return decisions
