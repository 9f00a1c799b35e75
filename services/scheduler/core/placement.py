"""Placement: which pending workflow runs on which runner. Pure: no I/O, no clock.

    place(pending, fleet) -> Decisions

Order of service (`service_order`): priority first (high, normal, low); within a priority,
round-robin across users (each user's first workflow, then each user's second, ...); users
within a round by who was served least recently (the caller's `last_served` counters, so the
rotation carries on across passes that place one workflow each), then by how long their
oldest workflow has waited; within a user, FIFO. So one user's 10,000 queued workflows delay
another user's single one by at most one placement.

Then filter -> score -> select, one workflow at a time in that order:
  filter: a runner of the workflow's owner (or a shared runner, when the owner may use
          shared runners), the workflow's tags are a subset of the runner's tags, runner
          enabled and connected, a free slot;
  score:  most-allocated first, in_flight / slots (pack busy runners, keep whole runners free
          for what needs them); ties by least recently assigned, then by id;
  select: the best; its in_flight goes up for the rest of the pass.

Index: runners are indexed by (pool, tag), and each (pool, tag set) a pass meets gets a heap
of the matching runners with a free slot, ordered by score (see `Placement`). A decision
reads at most two heap tops, O(log runners), whatever the number pending; building a heap
costs one pass over the runners with the set's rarest tag, once per pass.
Workflows left over get a reason: UNRESOLVABLE (no runner could ever match) or
UNSCHEDULABLE (matches exist, all busy, offline or disabled).
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum


class Reason(StrEnum):
    UNRESOLVABLE = "unresolvable"
    UNSCHEDULABLE = "unschedulable"


class Priority(IntEnum):
    """The values of comfyfleet.scheduler.v1.Priority (and of the workflows.priority column)."""

    LOW = 1
    NORMAL = 2
    HIGH = 3


@dataclass(frozen=True)
class PendingWorkflow:
    id: str
    user_id: str
    tags: frozenset[str]
    priority: int = Priority.NORMAL
    # Order of arrival within the owner's queue (smaller = earlier), e.g. created_at as a
    # number; equal values keep the order given.
    arrival: float = 0.0
    # The owner's tier allows shared (managed) runners.
    may_use_shared: bool = False


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
    # Made shared by an administrator: also serves every user who may use shared runners.
    shared: bool = False


@dataclass
class Decisions:
    bindings: list[tuple[str, str]] = field(default_factory=list)
    unplaced: dict[str, Reason] = field(default_factory=dict)


def service_order(
    pending: list[PendingWorkflow], last_served: Mapping[str, int] | None = None
) -> list[PendingWorkflow]:
    """Priority, then round-robin across users, then FIFO per user (module docstring).
    `last_served`: user id -> a counter of when the user was last given a runner (larger =
    more recently; absent = never)."""
    served = last_served or {}
    by_user: dict[tuple[int, str], list[PendingWorkflow]] = defaultdict(list)
    for wf in sorted(pending, key=lambda w: (-w.priority, w.arrival)):
        by_user[(wf.priority, wf.user_id)].append(wf)
    keyed: list[tuple[int, int, int, float, int, PendingWorkflow]] = []
    for n, ((priority, user_id), queue) in enumerate(by_user.items()):
        head, turn = queue[0].arrival, served.get(user_id, 0)
        keyed.extend((-priority, rank, turn, head, n, wf) for rank, wf in enumerate(queue))
    keyed.sort(key=lambda k: k[:5])
    return [k[5] for k in keyed]


_SHARED = "\x00shared"  # the pool of shared runners (no user id is empty or starts with NUL)

# A heap entry: smallest first = highest in_flight / slots, then least recently assigned, then
# id (unique, so the comparison never reaches the version or the runner).
_Entry = tuple[float, int, str, int, "_Runner"]


class _Runner:
    __slots__ = ("available", "heaps", "id", "in_flight", "last", "slots", "tags", "version")

    def __init__(self, r: RunnerSnapshot) -> None:
        self.id = r.id
        self.tags = r.tags
        self.slots = r.slots
        self.in_flight = r.in_flight
        self.last = r.last_assigned
        self.available = r.enabled and r.connected
        self.version = 0
        self.heaps: list[list[_Entry]] = []

    @property
    def free(self) -> bool:
        return self.available and self.in_flight < self.slots

    def entry(self) -> _Entry:
        return (-self.in_flight / self.slots, self.last, self.id, self.version, self)


def _best(heap: list[_Entry]) -> _Entry | None:
    """The best runner with a free slot in `heap`, dropping stale entries on the way."""
    while heap:
        top = heap[0]
        if top[4].version == top[3]:
            return top
        heapq.heappop(heap)
    return None


class Placement:
    """One placement pass over a snapshot: `decide` each workflow in service order.

    A pool is a user's own runners, or every shared runner. For each (pool, tag set) a pass
    meets, a heap holds the pool's runners whose tags include that set and that have a free
    slot, best first; it is built on first use from the pool's runners with the set's rarest
    tag. A runner's entry goes stale when it is assigned: its new entry is pushed into every
    heap it is in (at most 2^tags per pool), and stale tops are dropped when met. A decision
    reads the top of at most two heaps (own pool, shared pool).
    """

    def __init__(self, fleet: list[RunnerSnapshot]) -> None:
        self._pool: dict[str, list[_Runner]] = defaultdict(list)
        self._by_tag: dict[tuple[str, str], list[_Runner]] = defaultdict(list)
        counter = 0
        for snapshot in fleet:
            r = _Runner(snapshot)
            counter = max(counter, r.last)
            for pool in (snapshot.user_id, _SHARED) if snapshot.shared else (snapshot.user_id,):
                self._pool[pool].append(r)
                for tag in r.tags:
                    self._by_tag[(pool, tag)].append(r)
        self._counter = counter
        # (pool, tags) -> heap, or None when no runner of the pool has those tags at all.
        self._heaps: dict[tuple[str, frozenset[str]], list[_Entry] | None] = {}
        self._matches: dict[tuple[str, bool, frozenset[str]], list[list[_Entry]]] = {}
        self._full: set[tuple[str, bool, frozenset[str]]] = set()

    def _heap(self, pool: str, tags: frozenset[str]) -> list[_Entry] | None:
        key = (pool, tags)
        if key in self._heaps:
            return self._heaps[key]
        if tags:
            rarest = min(tags, key=lambda t: len(self._by_tag.get((pool, t), ())))
            matching = [r for r in self._by_tag.get((pool, rarest), ()) if tags <= r.tags]
        else:
            matching = self._pool.get(pool, [])
        heap: list[_Entry] | None = None
        if matching:
            heap = [r.entry() for r in matching if r.free]
            heapq.heapify(heap)
            for r in matching:
                r.heaps.append(heap)
        self._heaps[key] = heap
        return heap

    def decide(self, wf: PendingWorkflow) -> str | Reason:
        """The runner id `wf` is bound to (its slot taken for the rest of the pass), or why not."""
        mkey = (wf.user_id, wf.may_use_shared, wf.tags)
        heaps = self._matches.get(mkey)
        if heaps is None:
            pools = (wf.user_id, _SHARED) if wf.may_use_shared else (wf.user_id,)
            heaps = self._matches[mkey] = [h for p in pools if (h := self._heap(p, wf.tags)) is not None]
        if not heaps:
            return Reason.UNRESOLVABLE
        if mkey in self._full:
            return Reason.UNSCHEDULABLE
        best: _Entry | None = None
        for heap in heaps:
            top = _best(heap)
            if top is not None and (best is None or top < best):
                best = top
        if best is None:
            self._full.add(mkey)  # capacity only shrinks during a pass
            return Reason.UNSCHEDULABLE
        runner = best[4]
        runner.in_flight += 1
        self._counter += 1
        runner.last = self._counter
        runner.version += 1
        if runner.free:
            entry = runner.entry()
            for heap in runner.heaps:
                heapq.heappush(heap, entry)
        return runner.id


def place(
    pending: list[PendingWorkflow], fleet: list[RunnerSnapshot], last_served: Mapping[str, int] | None = None
) -> Decisions:
    placement = Placement(fleet)
    decisions = Decisions()
    for wf in service_order(pending, last_served):
        outcome = placement.decide(wf)
        if isinstance(outcome, Reason):
            decisions.unplaced[wf.id] = outcome
        else:
            decisions.bindings.append((wf.id, outcome))
    return decisions
