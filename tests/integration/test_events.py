"""Live progress over SSE, end to end: frame format and order, resuming with Last-Event-ID in
the middle of a run (on the same gateway and on a second gateway process), and replaying a
finished workflow. Everything is checked as a client sees it: the raw frames and their ids.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from services.devrun import Suite
from tests.integration.sse import frames
from tests.integration.test_end_to_end import png, statuses, submit

KINDS = {"status", "progress", "executing", "output", "log"}
TERMINAL = {"completed", "failed", "cancelled", "invalid"}


def raw_blocks(client: httpx.Client, url: str, headers: dict[str, str]) -> list[dict[str, str]]:
    """Every block of the stream as {field: value}, comments under ":", until the server closes it."""
    with client.stream("GET", url, headers=headers, timeout=30) as reply:
        assert reply.status_code == 200, reply.read()
        assert reply.headers["content-type"].startswith("text/event-stream")
        assert reply.headers["cache-control"] == "no-store"
        text = reply.read().decode()
    blocks = []
    for block in text.split("\n\n"):
        if block:
            fields: dict[str, str] = {}
            for line in block.split("\n"):
                key, _, value = line.partition(":")
                assert key not in fields, f"field {key!r} twice in one frame: {block!r}"
                fields[key] = value[1:] if value.startswith(" ") else value
            blocks.append(fields)
    assert text.endswith("\n\n"), "the stream ends on a frame boundary"
    return blocks


def unsigned(value: Any) -> Any:
    """`value` without the signed download URLs, which are fresh (new expiry) on every call."""
    if isinstance(value, dict):
        return {k: unsigned(v) for k, v in value.items() if k != "src"}
    if isinstance(value, list):
        return [unsigned(v) for v in value]
    return value


def same(stream: list[dict[str, Any]]) -> list[tuple[str, str, Any]]:
    return [(f["id"], f["event"], unsigned(f["data"])) for f in stream]


def created(client: httpx.Client) -> str:
    reply = submit(client, png(24, 24))
    assert reply.status_code == 201, reply.text
    return str(reply.json()["id"])


def full_log(client: httpx.Client, workflow_id: str) -> list[dict[str, Any]]:
    return list(frames(client, f"/v1/workflow/{workflow_id}/subscribe", {"Last-Event-ID": "0"}))


def test_frames_are_retry_snapshot_then_each_event_by_seq_then_close(client: httpx.Client) -> None:
    workflow_id = created(client)
    blocks = raw_blocks(client, f"/v1/workflow/{workflow_id}/subscribe", {})

    assert blocks[0] == {"retry": "3000"}
    snapshot = blocks[1]
    assert set(snapshot) == {"id", "event", "data"} and snapshot["event"] == "snapshot"
    shape = json.loads(snapshot["data"])
    assert set(shape) >= {"status", "prompt", "queue_number", "outputs", "cause", "started_at", "completed_at"}
    events = [b for b in blocks[2:] if "" not in b]  # keep-alive comments aside
    assert all(set(b) == {"id", "event", "data"} for b in events), events
    ids = [int(b["id"]) for b in events]
    assert ids == list(range(int(snapshot["id"]) + 1, int(snapshot["id"]) + 1 + len(ids))), "by seq, no gap"
    assert {b["event"] for b in events} <= KINDS
    data = [json.loads(b["data"]) for b in events]
    assert events[-1]["event"] == "status" and data[-1]["status"] == "completed"
    assert [d["status"] for b, d in zip(events, data, strict=True) if b["event"] == "status"][-1] == "completed"
    # What was live is exactly what the log replays after the snapshot's id.
    replay = full_log(client, workflow_id)
    tail = [f for f in replay if int(f["id"]) > int(snapshot["id"])]
    assert same(tail) == [(b["id"], b["event"], unsigned(d)) for b, d in zip(events, data, strict=True)]


def resume_midway(first: httpx.Client, second: httpx.Client, workflow_id: str) -> list[dict[str, Any]]:
    """Reads from `first` until the first `executing` frame, drops the connection, and reads
    the rest from `second` with Last-Event-ID; returns both parts in order."""
    url = f"/v1/workflow/{workflow_id}/subscribe"
    seen: list[dict[str, Any]] = []
    for frame in frames(first, url, {"Last-Event-ID": "0"}):
        seen.append(frame)
        if frame["event"] == "executing":
            break  # the client goes away in the middle of the run
    assert seen and seen[-1]["event"] == "executing", "the run ended before it was interrupted"
    rest = list(frames(second, url, {"Last-Event-ID": seen[-1]["id"]}))
    assert rest, "the resumed stream sends the rest"
    return seen + rest


def assert_exactly_the_log(client: httpx.Client, workflow_id: str, stitched: list[dict[str, Any]]) -> None:
    ids = [int(f["id"]) for f in stitched]
    assert ids == list(range(1, len(ids) + 1)), f"no gap, no duplicate: {ids}"
    log = full_log(client, workflow_id)
    assert same(stitched) == same(log)
    assert statuses(stitched) == ["accepted", "uploaded", "queued", "running", "completed"]


def test_reconnecting_midway_with_last_event_id_gets_exactly_the_missing_events(client: httpx.Client) -> None:
    workflow_id = created(client)
    stitched = resume_midway(client, client, workflow_id)
    assert_exactly_the_log(client, workflow_id, stitched)


def test_query_parameter_resumes_like_the_header(client: httpx.Client) -> None:
    workflow_id = created(client)
    log = full_log(client, workflow_id)
    middle = log[len(log) // 2]["id"]
    with client.stream("GET", f"/v1/workflow/{workflow_id}/subscribe", params={"last_event_id": middle}) as reply:
        assert reply.status_code == 200
        ids = [line[4:] for line in reply.iter_lines() if line.startswith("id: ")]
    assert ids == [f["id"] for f in log if int(f["id"]) > int(middle)]


def test_reconnecting_to_a_second_gateway_process_gets_the_rest(
    suite: Suite, client: httpx.Client, second_gateway: str
) -> None:
    workflow_id = created(client)
    with httpx.Client(base_url=second_gateway, headers={"Authorization": f"Bearer {suite.token}"},
                      timeout=30) as other:
        stitched = resume_midway(client, other, workflow_id)
    assert_exactly_the_log(client, workflow_id, stitched)


def test_a_finished_workflow_replays_its_events_and_closes(client: httpx.Client) -> None:
    workflow_id = created(client)
    log = full_log(client, workflow_id)  # ends only after the terminal status
    assert log[-1]["event"] == "status" and log[-1]["data"]["status"] in TERMINAL
    url = f"/v1/workflow/{workflow_id}/subscribe"

    # Each of these must close by itself: keep-alives come only every 15 s, the read timeout is 30 s,
    # and the whole test is bounded by pytest's timeout.
    again = list(frames(client, url, {"Last-Event-ID": "0"}))
    assert same(again) == same(log)
    only_snapshot = list(frames(client, url, {}))
    assert [f["event"] for f in only_snapshot] == ["snapshot"]
    assert only_snapshot[0]["id"] == log[-1]["id"] and only_snapshot[0]["data"]["status"] == "completed"
    assert list(frames(client, url, {"Last-Event-ID": log[-1]["id"]})) == []
    later = list(frames(client, url, {"Last-Event-ID": log[2]["id"]}))
    assert [f["id"] for f in later] == [f["id"] for f in log[3:]]
