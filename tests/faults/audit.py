"""What the fault tests check after the faults: read from the public API, the scheduler's
event log (WatchWorkflow from the start, over gRPC: its events carry their times) and the
doubles' /history (what each ComfyUI actually ran, with ComfyUI's own timestamps).
"""

from __future__ import annotations

import itertools
import re
import time
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
from comfyfleet.scheduler.v1 import workflow_pb2, workflow_service_pb2, workflow_service_pb2_grpc

from tests.integration.fleet import TERMINAL, Double, Fleet

ASSIGNED = re.compile(r"assigned to runner (\S+) \(attempt (\d+)\)")
REQUEUED = re.compile(r"requeued after attempt (\d+)")
UNSENT = "runner went away before the assignment was sent"


@dataclass
class Event:
    time: float  # Unix seconds, the scheduler's clock
    kind: str  # "status" or "log" (others are not needed here)
    text: str  # the status name, or the log message


@dataclass
class Tenure:
    """One attempt's stay on a runner, from the event log: assigned until requeued or finished."""

    runner: str
    attempt: int
    assigned: float
    closed: float | None  # None: still open when the log was read
    how: str  # "requeued", "unsent", a terminal status, or "open"


def event_log(fleet: Fleet, workflow_id: str, timeout: float = 20) -> list[Event]:
    """The workflow's whole event log; it ends with the terminal status (the workflow must be terminal)."""
    auth = (("authorization", f"Bearer {fleet.suite.token}"),)
    out: list[Event] = []
    with grpc.insecure_channel(f"127.0.0.1:{fleet.suite.scheduler_port}") as channel:
        stub = workflow_service_pb2_grpc.WorkflowServiceStub(channel)
        request = workflow_service_pb2.WatchWorkflowRequest(id=workflow_id, from_start=True)
        for item in stub.WatchWorkflow(request, metadata=auth, timeout=timeout):
            if item.WhichOneof("message") != "event":
                continue
            event = item.event
            at = event.time.seconds + event.time.nanos / 1e9
            kind = event.WhichOneof("kind")
            if kind == "status":
                name = workflow_pb2.WorkflowStatus.Name(event.status.workflow.status)
                out.append(Event(at, "status", name.removeprefix("WORKFLOW_STATUS_").lower()))
            elif kind == "log":
                out.append(Event(at, "log", event.log.message))
    return out


def tenures(events: list[Event]) -> list[Tenure]:
    """Each attempt's runner and when it was assigned and taken off it (requeue, unsent, end)."""
    out: list[Tenure] = []
    for event in events:
        current = out[-1] if out and out[-1].closed is None else None
        if event.kind == "log" and (m := ASSIGNED.search(event.text)):
            assert current is None, f"attempt {m.group(2)} assigned while {current} was still open"
            out.append(Tenure(m.group(1), int(m.group(2)), event.time, None, "open"))
        elif current is None:
            continue
        elif event.kind == "log" and (m := REQUEUED.search(event.text)):
            assert int(m.group(1)) == current.attempt, (event, current)
            current.closed, current.how = event.time, "requeued"
        elif event.kind == "log" and UNSENT in event.text:
            current.closed, current.how = event.time, "unsent"
        elif event.kind == "status" and event.text in TERMINAL:
            current.closed, current.how = event.time, event.text
    return out


def wait_all_terminal(fleet: Fleet, ids: list[str], timeout: float) -> dict[str, dict[str, Any]]:
    """Every workflow's record once all are terminal; fails naming those that are not."""
    deadline = time.monotonic() + timeout
    done: dict[str, dict[str, Any]] = {}
    while True:
        for wid in ids:
            if wid not in done:
                wf = fleet.get(wid)
                if wf["status"] in TERMINAL:
                    done[wid] = wf
        if len(done) == len(ids):
            return done
        if time.monotonic() > deadline:
            stuck = {wid: fleet.get(wid)["status"] for wid in ids if wid not in done}
            raise AssertionError(f"{len(stuck)} of {len(ids)} workflows not terminal after {timeout}s: {stuck}")
        time.sleep(0.5)


@dataclass
class Run:
    """One prompt as a ComfyUI ran it (from its /history)."""

    double: str
    prompt_id: str
    start: float  # Unix seconds (ComfyUI's execution_start timestamp)
    end: float  # execution_success / execution_error / execution_interrupted


def runs_by_prefix(doubles: dict[str, Double]) -> dict[str, list[Run]]:
    """prefix (= workflow) -> every prompt of it that a ComfyUI finished, in start order."""
    out: dict[str, list[Run]] = {}
    for name, double in doubles.items():
        history = httpx.get(f"{double.url}/history", timeout=10).json()
        for prompt_id, entry in history.items():
            prefix = entry["prompt"][2]["3"]["inputs"]["filename_prefix"]
            stamps = {event: data["timestamp"] for event, data in entry["status"]["messages"]}
            end = next(stamps[e] for e in ("execution_success", "execution_error", "execution_interrupted")
                       if e in stamps)
            out.setdefault(prefix, []).append(Run(name, prompt_id, stamps["execution_start"] / 1000, end / 1000))
    for runs in out.values():
        runs.sort(key=lambda r: r.start)
    return out


def overlapping(runs: dict[str, list[Run]]) -> dict[str, list[Run]]:
    """The workflows two of whose prompts ran at the same time (on any ComfyUI)."""
    return {prefix: rs for prefix, rs in runs.items()
            if any(later.start < earlier.end for earlier, later in itertools.pairwise(rs))}
