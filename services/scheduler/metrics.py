"""The scheduler's Prometheus metrics, read from the objects `SchedulerApp` already holds.

    comfyfleet_workflows{state}                   workflows in each state (the database)
    comfyfleet_queue_depth{priority}              accepted workflows without a runner yet
    comfyfleet_runners{state}                     registered, connected, offline, disabled, draining
    comfyfleet_runner_slots{kind}                 total and in_use over the connected runners
    comfyfleet_placement_seconds                  time of one placement pass (read, place, dispatch)
    comfyfleet_events_total{kind}                 workflow events committed and published (rate = events/s)
    comfyfleet_watchers                           WatchWorkflow streams open on this scheduler
    comfyfleet_sqlite_checkpoints                 WAL checkpoints of a SQLite file so far (on its thread)
    comfyfleet_sqlite_checkpoint_waits            writes held until a checkpoint copied a WAL that had
                                                  outgrown its bound (db/sqlite_file.py)
    comfyfleet_sqlite_wal_frames                  the WAL's size in frames at the last checkpoint

The gauges are set at scrape time (`SchedulerMetrics.refresh`, awaited by the metrics
listener on the event loop): two grouped counts through indexes that exist for placement
(`ix_workflows_status_runner`, `ix_workflows_pending`) and one over `runners`, at most once
per `min_interval` seconds however often Prometheus asks. Runner states come from the Fleet
in memory. The two event-driven families are counted by wrapping, at wiring time, the
placement pass and the hub's publish, so neither module needs to know about metrics.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from comfyfleet.scheduler.v1 import workflow_pb2
from prometheus_client import Counter, Gauge, Histogram
from sqlalchemy import text

from services.scheduler.core.placement import Priority
from services.scheduler.core.state import Status

if TYPE_CHECKING:
    from services.scheduler.server import SchedulerApp

WORKFLOWS = Gauge("comfyfleet_workflows", "Workflows by state", ["state"])
QUEUE_DEPTH = Gauge("comfyfleet_queue_depth", "Accepted workflows waiting for a runner, by priority", ["priority"])
RUNNERS = Gauge("comfyfleet_runners", "Runners by state", ["state"])
RUNNER_SLOTS = Gauge("comfyfleet_runner_slots", "Slots of the connected runners", ["kind"])
WATCHERS = Gauge("comfyfleet_watchers", "WatchWorkflow streams open on this scheduler")
PLACEMENT_SECONDS = Histogram(
    "comfyfleet_placement_seconds", "Time of one placement pass: read the batch, place, dispatch",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
SQLITE_CHECKPOINTS = Gauge("comfyfleet_sqlite_checkpoints", "WAL checkpoints of the SQLite file")
SQLITE_CHECKPOINT_WAITS = Gauge("comfyfleet_sqlite_checkpoint_waits",
                                "Writes held until a checkpoint copied a WAL that had outgrown its bound")
SQLITE_WAL_FRAMES = Gauge("comfyfleet_sqlite_wal_frames", "The SQLite WAL's size in frames at the last checkpoint")
EVENTS = Counter("comfyfleet_events", "Workflow events committed and published", ["kind"])

_BY_STATE = "SELECT status, count(*) FROM workflows GROUP BY status"
_QUEUED = ("SELECT priority, count(*) FROM workflows WHERE status = :accepted AND runner_id IS NULL "
           "GROUP BY priority")
_REGISTERED = "SELECT count(*) FROM runners"


class SchedulerMetrics:
    """Fills the gauges from one scheduler app (None while this process is a standby)."""

    def __init__(self, *, min_interval: float = 2.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.app: SchedulerApp | None = None
        self._min_interval = min_interval
        self._clock = clock
        self._read_at: float | None = None

    def watch(self, app: SchedulerApp) -> SchedulerApp:
        """Counts the app's placement passes and events from now on; the gauges follow it."""
        self.app = app
        _time_placement(app)
        _count_events(app)
        return app

    async def refresh(self) -> None:
        app = self.app
        if app is None:
            return
        now = self._clock()
        if self._read_at is not None and now - self._read_at < self._min_interval:
            return
        self._read_at = now
        self._refresh_fleet(app)
        async with app.db.engine.connect() as conn:
            by_state: dict[str, int] = dict((await conn.execute(text(_BY_STATE))).tuples().all())
            queued: dict[int, int] = dict(
                (await conn.execute(text(_QUEUED), {"accepted": Status.ACCEPTED.value})).tuples().all())
            registered = (await conn.execute(text(_REGISTERED))).scalar_one()
        for state in Status:
            WORKFLOWS.labels(state.value).set(by_state.get(state.value, 0))
        for priority in Priority:
            QUEUE_DEPTH.labels(priority.name.lower()).set(queued.get(priority.value, 0))
        connected = sum(1 for s in app.execution.fleet.sessions.values() if not s.closed)
        RUNNERS.labels("registered").set(registered)
        RUNNERS.labels("offline").set(max(0, registered - connected))

    def _refresh_fleet(self, app: SchedulerApp) -> None:
        sessions = [s for s in app.execution.fleet.sessions.values() if not s.closed]
        RUNNERS.labels("connected").set(len(sessions))
        RUNNERS.labels("disabled").set(sum(1 for s in sessions if not s.enabled))
        RUNNERS.labels("draining").set(sum(1 for s in sessions if s.draining))
        RUNNER_SLOTS.labels("total").set(sum(s.slots for s in sessions))
        RUNNER_SLOTS.labels("in_use").set(sum(len(s.held) for s in sessions))
        watchers: Any = getattr(app.execution.hub, "_watchers", {})
        WATCHERS.set(sum(len(group) for group in watchers.values()))
        if (file := app.db.sqlite_file) is not None:
            SQLITE_CHECKPOINTS.set(file.checkpoints)
            SQLITE_CHECKPOINT_WAITS.set(file.checkpoint_waits)
            SQLITE_WAL_FRAMES.set(file.wal_frames)


def _time_placement(app: SchedulerApp) -> None:
    execution = app.execution
    inner: Callable[[], Awaitable[int]] = execution.placement_pass

    async def timed_pass() -> int:
        started = time.perf_counter()
        try:
            return await inner()
        finally:
            PLACEMENT_SECONDS.observe(time.perf_counter() - started)

    execution.placement_pass = timed_pass  # type: ignore[method-assign]


def _count_events(app: SchedulerApp) -> None:
    hub = app.execution.hub
    inner = hub.publish

    def counted_publish(events: list[workflow_pb2.WorkflowEvent]) -> None:
        for event in events:
            EVENTS.labels(event.WhichOneof("kind") or "unknown").inc()
        inner(events)

    hub.publish = counted_publish  # type: ignore[method-assign]
