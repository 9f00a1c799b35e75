"""Losing a runner or the scheduler mid-run, with real processes and SIGKILL/SIGSTOP.

- A runner killed while it runs a workflow: the workflow is requeued within lease + 5 s and
  completes on the other runner (attempt 2).
- A runner frozen (SIGSTOP) past its lease: requeued and completed elsewhere; when it wakes
  up, its late events for the old attempt change nothing.
- With only one runner, killed mid-run each time it comes back: `failed`, cause runner lost,
  after max_attempts (3).
- The scheduler killed mid-run and restarted: every workflow accepted before reaches a
  terminal state, and no ComfyUI ran any of them twice.
- A runner told to stop (SIGTERM) finishes what it runs, and new work goes elsewhere at once.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.fleet import EVERY_ATTEMPT_RUNS, TERMINAL, Fleet, fleet_suite, start_double, wait_for

pytestmark = pytest.mark.timeout(90)

LEASE = 2.0
SHORT_LEASE = {"SCHEDULER_LEASE_SECONDS": str(LEASE), "SCHEDULER_HEARTBEAT_SECONDS": "0.5"}
SLOW_MS = 700  # each of the 3 nodes: a run takes about 2 s, long enough to be caught mid-run


@pytest.fixture
def two_runners(tmp_path: Path) -> Iterator[Fleet]:
    with fleet_suite(tmp_path / "var", **SHORT_LEASE) as f:
        f.add_runner("one", start_double(tmp_path / "one", SLOW_MS), "gpu")
        f.add_runner("two", start_double(tmp_path / "two", SLOW_MS), "gpu")
        yield f


def running_on(fleet: Fleet, workflow_id: str) -> str:
    wf = fleet.wait_status(workflow_id, {"running"} | TERMINAL, 20)
    assert wf["status"] == "running", wf
    return next(name for name in fleet.doubles if fleet.runner_id(name) == wf["runner_id"])


def log_messages(fleet: Fleet, workflow_id: str) -> list[str]:
    from tests.integration.sse import frames

    return [f["data"].get("message", "") for f in frames(fleet.client, f"/v1/workflow/{workflow_id}/subscribe",
                                                         {"Last-Event-ID": "0"}) if f["event"] == "log"]


def test_a_killed_runners_workflow_is_requeued_within_the_lease_and_completes_elsewhere(two_runners: Fleet) -> None:
    fleet = two_runners
    wid = fleet.submit("lost-once", "gpu")
    victim = running_on(fleet, wid)
    survivor = next(name for name in fleet.doubles if name != victim)

    fleet.suite.kill(f"runner-{victim}", signal.SIGKILL)
    killed_at = time.monotonic()
    wf = wait_for(lambda: (w := fleet.get(wid))["attempt"] == 2 and w, LEASE + 5, "reassigned (attempt 2)")
    assert time.monotonic() - killed_at <= LEASE + 5
    assert wf["runner_id"] == fleet.runner_id(survivor)

    wf = fleet.wait_status(wid, TERMINAL, 30)
    assert wf["status"] == "completed" and wf["attempt"] == 2 and wf["runner_id"] == fleet.runner_id(survivor)
    assert fleet.doubles[survivor].prefixes()["lost-once"] == 1
    outputs = fleet.client.get(f"/v1/workflow/{wid}/outputs").json()
    assert len(outputs) == 1
    assert any("requeued after attempt 1" in m for m in log_messages(fleet, wid))


def test_a_frozen_runner_loses_its_lease_and_its_late_events_are_ignored(two_runners: Fleet) -> None:
    fleet = two_runners
    wid = fleet.submit("frozen", "gpu")
    victim = running_on(fleet, wid)
    survivor = next(name for name in fleet.doubles if name != victim)
    proc = fleet.suite.procs[f"runner-{victim}"]

    proc.send_signal(signal.SIGSTOP)  # its stream stays open, but nothing arrives on it
    try:
        wf = fleet.wait_status(wid, TERMINAL, LEASE + 20)
        # its ComfyUI finished the first attempt meanwhile: the frozen runner has those events to send
        wait_for(lambda: fleet.doubles[victim].prefixes()["frozen"] == 1, 10, "the first attempt to finish")
    finally:
        proc.send_signal(signal.SIGCONT)
    assert wf["status"] == "completed" and wf["attempt"] == 2 and wf["runner_id"] == fleet.runner_id(survivor)

    # The woken runner comes back (a second welcome) and is told to abandon attempt 1.
    wait_for(lambda: fleet.welcomes(victim) >= 2, 20, f"{victim} reconnected")
    time.sleep(1.0)
    after = fleet.get(wid)
    assert (after["status"], after["attempt"], after["runner_id"]) == ("completed", 2, fleet.runner_id(survivor))
    assert after["updated_at"] == wf["updated_at"], "a late event changed the workflow"
    assert len(fleet.client.get(f"/v1/workflow/{wid}/outputs").json()) == 1


def test_with_no_other_runner_it_fails_with_runner_lost_after_max_attempts(tmp_path: Path) -> None:
    with fleet_suite(tmp_path / "var", **SHORT_LEASE) as fleet:
        fleet.add_runner("only", start_double(tmp_path / "only", 1000), "gpu")
        wid = fleet.submit("lost-thrice", "gpu", graph=EVERY_ATTEMPT_RUNS)
        for attempt in (1, 2, 3):
            wait_for(lambda a=attempt: (w := fleet.get(wid))["status"] == "running" and w["attempt"] == a, 30,
                     f"attempt {attempt} running")
            fleet.suite.kill("runner-only", signal.SIGKILL)
            fleet.restart_runner("only", "gpu")  # comes back at once, without the workflow
        wf = fleet.wait_status(wid, TERMINAL, LEASE + 5)
        assert wf["status"] == "failed" and wf["attempt"] == 3
        assert wf["exception_type"] == "RunnerLost" and wf["exception_message"].startswith("runner lost")
        time.sleep(LEASE + 0.5)
        assert fleet.get(wid)["status"] == "failed"  # and it stays failed: nothing runs it again


def test_after_a_scheduler_crash_every_accepted_workflow_ends_and_none_ran_twice(tmp_path: Path) -> None:
    # A lease longer than the runners' reconnect backoff: they come back in time to claim their work.
    with fleet_suite(tmp_path / "var", SCHEDULER_LEASE_SECONDS="10", SCHEDULER_HEARTBEAT_SECONDS="1") as fleet:
        fleet.add_runner("a", start_double(tmp_path / "a", 300), "gpu", slots=2)
        fleet.add_runner("b", start_double(tmp_path / "b", 300), "gpu", slots=1)
        ids = [fleet.submit(f"crash-{i}", "gpu", color=(i * 20, 10, 10)) for i in range(8)]
        wait_for(lambda: any(fleet.get(w)["status"] == "running" for w in ids), 20, "something running")

        fleet.suite.kill("scheduler", signal.SIGKILL)
        time.sleep(1.0)
        fleet.suite.start("scheduler")
        fleet.suite.wait_ready("scheduler")

        done = {w: fleet.wait_status(w, TERMINAL, 60) for w in ids}
        assert {wf["status"] for wf in done.values()} == {"completed"}, done
        ran: Counter[str] = Counter()
        for double in fleet.doubles.values():
            ran.update(double.prefixes())
        assert ran == {f"crash-{i}": 1 for i in range(8)}, "a workflow ran twice (or never) in ComfyUI"


def test_a_runner_shutting_down_finishes_its_work_and_gets_nothing_new(tmp_path: Path) -> None:
    with fleet_suite(tmp_path / "var", **SHORT_LEASE) as fleet:
        fleet.add_runner("x", start_double(tmp_path / "x", 1000), "gpu", slots=2)
        first = fleet.submit("before-sigterm", "gpu")
        assert running_on(fleet, first) == "x"
        fleet.add_runner("y", start_double(tmp_path / "y", 100), "gpu", slots=1)
        fleet.suite.procs["runner-x"].send_signal(signal.SIGTERM)
        time.sleep(1.0)  # a heartbeat (0.5 s) says draining
        # x runs 1 of 2 slots (1/2 = 0.5) and y none (0/1 = 0): most-allocated would pick x
        second = fleet.submit("after-sigterm", "gpu")
        placed = fleet.wait_status(second, TERMINAL, 20)
        # y at once: not sent to x first (x would ignore it, and it would come back after x's
        # lease as attempt 2)
        assert (placed["status"], placed["runner_id"], placed["attempt"]) == ("completed", fleet.runner_id("y"), 1)
        done = fleet.wait_status(first, TERMINAL, 20)
        assert done["status"] == "completed" and done["runner_id"] == fleet.runner_id("x") and done["attempt"] == 1
