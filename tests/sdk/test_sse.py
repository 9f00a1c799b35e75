"""The I/O-free part of following an event stream (`comfyfleet.sse`), which `Client` and
`AsyncClient` share: SSE frames from lines, what a reconnect resumes after, replays dropped,
when a stream is over, the error answers raised or retried, and the pacing of reconnects.
No server: each test feeds the lines a connection would read.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from comfyfleet.errors import APIError, NotFoundError, RateLimitError, ServiceUnavailableError, WatchError
from comfyfleet.sse import Connection, FrameDecoder, Resume

RUNNING = {"id": "w1", "status": "running"}


def lines(*frames: tuple[int, str, dict[str, Any]]) -> list[str]:
    """The lines of SSE frames as `iter_lines` yields them, a keep-alive comment between them."""
    out = [": keepalive", ""]
    for seq, kind, data in frames:
        out += [f"id: {seq}", f"event: {kind}", f"data: {json.dumps(data)}", ""]
    return out


def read(connection: Connection, stream: list[str]) -> list[tuple[int, str]]:
    events = [connection.feed(line) for line in stream]
    return [(e.seq, e.kind) for e in events if e is not None]


def test_frame_decoder_follows_the_sse_rules() -> None:
    decoder = FrameDecoder()
    stream = ["retry: 3000", "", ": keepalive", "", "id: 7", "event: progress", 'data: {"value":', "data: 3}", "",
              "data: no id"]
    frames = [f for f in (decoder.feed(line) for line in [*stream, ""]) if f is not None]
    assert [(f.id, f.event, f.data) for f in frames] == [("7", "progress", '{"value":\n3}'), ("7", "message", "no id")]
    assert decoder.retry_ms == 3000


def test_a_reconnect_resumes_after_the_last_event_and_drops_the_replay() -> None:
    resume = Resume(None, max_failures=3)
    assert "Last-Event-ID" not in resume.headers(), "a first connection starts with a snapshot"
    first = Connection(resume)
    assert read(first, lines((4, "snapshot", RUNNING), (5, "log", {"message": "a"}))) == [(4, "snapshot"), (5, "log")]
    assert resume.headers()["Last-Event-ID"] == "5"

    second = Connection(resume)
    replay = lines((5, "log", {"message": "a"}), (6, "executing", {"node_id": "3"}))
    assert read(second, replay) == [(6, "executing")], "5 was seen: not yielded twice"
    assert resume.headers() == {"Accept": "text/event-stream", "Cache-Control": "no-store", "Last-Event-ID": "6"}


def test_a_frame_without_an_id_is_not_an_event() -> None:
    resume = Resume(0, max_failures=3)
    assert read(Connection(resume), ["event: log", 'data: {"message": "a"}', ""]) == []
    assert resume.last_id == 0


@pytest.mark.parametrize(("until_terminal", "done"), [(True, True), (False, False)])
def test_a_terminal_status_ends_a_workflow_stream_but_not_the_fleet_stream(until_terminal: bool, done: bool) -> None:
    resume = Resume(None, max_failures=3, until_terminal=until_terminal)
    read(Connection(resume), lines((7, "status", {**RUNNING, "status": "completed"})))
    assert resume.done is done


def test_the_fleet_stream_resumes_at_the_id_of_a_frame_without_data() -> None:
    resume = Resume(None, max_failures=3, until_terminal=False)
    assert read(Connection(resume), ["id: 41", ""]) == [], "GET /v1/events starts live with `id: <last>`"
    assert resume.headers()["Last-Event-ID"] == "41"


@pytest.mark.parametrize("error", [NotFoundError(404, "workflow not found"), APIError(400, "bad request")])
def test_an_error_answer_that_is_not_429_or_503_is_raised(error: APIError) -> None:
    with pytest.raises(type(error)):
        Connection(Resume(None, max_failures=3)).refused(error)


@pytest.mark.parametrize(("error", "delay"), [
    (ServiceUnavailableError(503, "scheduler restarting", retry_after=2.0), 2.0),
    (RateLimitError(429, "slow down", retry_after=3600.0), 30.0),  # at most 30 s
    (ServiceUnavailableError(503, "scheduler restarting"), 0.0),  # no Retry-After: the first retry at once
])
def test_a_429_or_503_is_retried_after_its_retry_after(error: APIError, delay: float) -> None:
    connection = Connection(Resume(None, max_failures=3))
    connection.refused(error)
    assert connection.retry_delay() == delay


def test_reconnects_back_off_and_a_new_event_resets_the_count() -> None:
    resume = Resume(None, max_failures=10)
    # 1st failure: at once; then 0.25 * 2 ** (failures - 2), at most 5 s.
    assert [Connection(resume).retry_delay() for _ in range(7)] == [0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 5.0]
    read(Connection(resume), lines((1, "log", {"message": "a"})))
    assert Connection(resume).retry_delay() == 0.0


@pytest.mark.parametrize(("until_terminal", "cause"), [
    (True, "the stream ended before the workflow finished"),
    (False, "the stream ended"),
])
def test_too_many_failures_in_a_row_raise_watch_error_with_the_last_cause(until_terminal: bool, cause: str) -> None:
    resume = Resume(None, max_failures=2, until_terminal=until_terminal)
    Connection(resume).retry_delay()
    lost = Connection(resume)
    lost.lost(ConnectionResetError("reset by peer"))
    lost.retry_delay()
    with pytest.raises(WatchError, match=f"failed 3 times in a row: {cause}$"):
        Connection(resume).retry_delay()


def test_a_clean_end_with_nothing_new_is_reported_so_the_caller_can_ask_if_the_workflow_finished() -> None:
    resume = Resume(9, max_failures=3)
    quiet = Connection(resume)
    read(quiet, lines((9, "status", {**RUNNING, "status": "completed"})))  # a replay of the last event
    quiet.ended = True
    assert quiet.ended_empty

    moved = Connection(resume)
    read(moved, lines((10, "log", {"message": "late"})))
    moved.ended = True
    assert not moved.ended_empty

    cut = Connection(resume)
    cut.lost(ConnectionResetError("reset by peer"))
    assert not cut.ended_empty, "a broken connection says nothing about the workflow"
