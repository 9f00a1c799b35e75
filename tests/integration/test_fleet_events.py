"""The fleet-wide stream GET /v1/events over real processes: three workflows run while a client
reads the caller's stream, drops it midway and resumes with Last-Event-ID on a second gateway
process; what it gets is checked frame by frame (ids, kinds, data) against each workflow's own
log. Another user's stream shows none of it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Iterator
from typing import Any
from unittest import mock

import httpx
import pytest

from services.devrun import Suite
from services.scheduler.admin import main as admin_main
from tests.integration.sse import frames
from tests.integration.test_end_to_end import png, submit
from tests.integration.test_events import created, full_log, unsigned

TERMINAL = {"completed", "failed", "cancelled", "invalid"}
# Straight to the gateway only (a suite start costs ~5-20 s): the stream through Envoy was run
# once (it passes) and is the same SSE path tests/integration/test_events.py checks there.
pytestmark = pytest.mark.parametrize("suite", ["direct"], indirect=True)


def new_user_token(suite: Suite, name: str) -> str:
    """A user and API token made with the admin command on the scheduler's database."""
    env = {"SCHEDULER_DATABASE_URL": f"sqlite+aiosqlite:///{suite.var_dir}/scheduler.db"}
    out = io.StringIO()
    with mock.patch.dict(os.environ, env), contextlib.redirect_stdout(out):
        assert admin_main(["create-user", name]) == 0
        assert admin_main(["create-token", name]) == 0
    return out.getvalue().strip().splitlines()[-1]


def read_until(client: httpx.Client, headers: dict[str, str], done: Any, timeout: float = 60) -> list[dict[str, Any]]:
    """Frames of /v1/events until `done(frames)` (the stream itself never ends); then hangs up."""
    seen: list[dict[str, Any]] = []
    for frame in frames(client, "/v1/events", headers, timeout=timeout):
        seen.append(frame)
        if done(seen):
            break
    return seen


def finished(ids: set[str]) -> Any:
    return lambda seen: ids <= {f["data"]["workflow_id"] for f in seen
                                if f["event"] == "status" and f["data"]["status"] in TERMINAL}


def frames_of(reply: httpx.Response) -> Iterator[dict[str, Any]]:
    """The frames of an open SSE response (as tests.integration.sse.frames)."""
    frame: dict[str, Any] = {}
    for line in reply.iter_lines():
        if line == "":
            if "data" in frame:
                frame["data"] = json.loads(frame["data"])
                yield frame
            frame = {}
        elif not line.startswith(":"):
            key, _, value = line.partition(":")
            frame[key] = value.removeprefix(" ")


def test_reconnecting_to_a_second_gateway_gets_exactly_the_missing_events_and_others_see_none(
        suite: Suite, client: httpx.Client, second_gateway: str) -> None:
    other_token = new_user_token(suite, "fleet-watcher")
    with httpx.Client(base_url=second_gateway, timeout=30) as second, \
            httpx.Client(base_url=suite.gateway_url, headers={"Authorization": f"Bearer {other_token}"},
                         timeout=30) as theirs:
        # The other user watches live (no Last-Event-ID) from before anything runs until their own
        # workflow, started after ours finished, has finished too.
        with theirs.stream("GET", "/v1/events", timeout=60) as other_reply:
            assert other_reply.status_code == 200
            ours = {created(client) for _ in range(3)}
            # Ours from the start, hung up midway (while the workflows run), resumed elsewhere.
            first_part = read_until(client, {"Last-Event-ID": "0"}, lambda seen: len(seen) >= 7)
            rest = read_until(second, {"Authorization": f"Bearer {suite.token}",
                                       "Last-Event-ID": first_part[-1]["id"]}, finished(ours))
            # They have no runner: their workflow waits until they cancel it.
            submitted = submit(theirs, png(8, 8), tags="")
            assert submitted.status_code == 201, submitted.text
            their_id = submitted.json()["id"]
            assert theirs.post(f"/v1/workflow/{their_id}/cancel").status_code == 200
            their_live: list[dict[str, Any]] = []
            for frame in frames_of(other_reply):
                their_live.append(frame)
                if finished({their_id})(their_live):
                    break

    assert any(f["event"] != "status" or f["data"]["status"] not in TERMINAL for f in rest), \
        "the first part ended before the workflows did: nothing was read live after the reconnect"
    stitched = first_part + rest
    ids = [int(f["id"]) for f in stitched]
    assert ids == list(range(1, len(ids) + 1)), f"no gap, no duplicate: {ids}"
    assert {f["data"]["workflow_id"] for f in stitched} == ours
    # Each workflow's events are its own log's, in order, with the same kinds and data.
    for workflow_id in ours:
        log = full_log(client, workflow_id)
        mine = [f for f in stitched if f["data"]["workflow_id"] == workflow_id]
        assert [(f["event"], unsigned(f["data"])) for f in mine] \
            == [(f["event"], unsigned({**f["data"], "workflow_id": workflow_id})) for f in log]
    # The other user's stream: only their workflow, numbered from their own 1.
    assert {f["data"]["workflow_id"] for f in their_live} == {their_id}
    assert [int(f["id"]) for f in their_live] == list(range(1, len(their_live) + 1))


def test_bad_cursor_is_a_400_with_the_error_body(client: httpx.Client) -> None:
    reply = client.get("/v1/events", headers={"Last-Event-ID": "-3"})
    assert reply.status_code == 400
    body = reply.json()
    assert body["reason"] == "INVALID_FIELD" and body["details"] == [{"field": "Last-Event-ID", "value": "-3"}]
    assert client.get("/v1/events", headers={"Authorization": "Bearer nope"}).status_code == 401
