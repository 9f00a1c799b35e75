"""The SDK against the running suite: create with a file and parameters, watch (including a
connection broken mid-stream), outputs and their bytes, cancel, list, user, typed errors.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from comfyfleet import AsyncClient, Client
from comfyfleet.errors import AuthenticationError, BadRequestError, ConflictError, NotFoundError
from comfyfleet.models import ExecutingEvent, OutputEvent, ProgressEvent, StatusEvent
from PIL import Image

from services.devrun import Suite
from tests.integration.sse import frames
from tests.sdk.conftest import WORKFLOW, png

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def create(client: Client, photo: Any, **overrides: Any) -> str:
    args: dict[str, Any] = {"name": "sdk test", "params": {"prefix": "sdk_cat"}, "choices": {"method": "bilinear"},
                            "files": {"photo": photo}, "tags": ["gpu"], **overrides}
    return client.workflows.create(WORKFLOW, **args).id


def replayed_ids(suite: Suite, workflow_id: str) -> list[int]:
    """Every event id of a finished workflow, read with plain httpx (the reference)."""
    with httpx.Client(base_url=suite.gateway_url, headers={"Authorization": f"Bearer {suite.token}"}) as raw:
        return [int(f["id"]) for f in frames(raw, f"/v1/workflow/{workflow_id}/subscribe", {"Last-Event-ID": "0"})]


def test_create_with_a_file_and_params_then_watch_outputs_and_download(
        client: Client, workflow_file: Path, photo_file: Path, tmp_path: Path) -> None:
    created = client.workflows.create(workflow_file, name="sdk test", params={"prefix": "sdk_cat"},
                                      choices={"method": "bilinear"}, files={"photo": photo_file}, tags=["gpu"],
                                      priority="high")
    assert created.status == "accepted" and created.name == "sdk test" and created.tags == ["gpu"]
    assert created.started_at is None and created.created_at is not None

    events = list(client.workflows.watch(created.id))
    assert isinstance(events[0], StatusEvent) and events[0].kind == "snapshot"
    assert [e.seq for e in events] == sorted({e.seq for e in events}), "in order, none twice"
    statuses = [e.status for e in events if isinstance(e, StatusEvent) and e.kind == "status"]
    assert statuses[-1] == "completed" and "running" in statuses
    assert isinstance(events[-1], StatusEvent) and events[-1].is_terminal, "the iterator ends after the terminal status"
    assert {e.node_id for e in events if isinstance(e, ExecutingEvent)} >= {"2", "3"}
    progress = [e for e in events if isinstance(e, ProgressEvent)]
    assert progress and {(e.node_id, e.max) for e in progress} == {("5", 4)}
    [stored] = [e.output for e in events if isinstance(e, OutputEvent)]
    started = time.monotonic()
    assert list(client.workflows.watch(created.id, after=events[-1].seq)) == [], "nothing after the end"
    assert time.monotonic() - started < 5, "and no reconnect loop to find that out"

    record = client.workflows.get(created.id)
    assert record.status == "completed" and record.priority == "high" and record.attempt == 1
    params = dict(record.workflow_params)
    assert params["$text(prefix, sdk)"] == "sdk_cat"
    assert params["$choice(method, nearest-exact, bilinear, area)"] == "bilinear"

    [output] = client.workflows.outputs(created.id)
    assert output.id == stored.id and output.node_id == "3" and output.content_type == "image/png"
    assert output.filename.startswith("sdk_cat_")
    path = client.workflows.download(output, f"{tmp_path}/out/")  # a trailing slash: a new folder
    assert path == tmp_path / "out" / output.filename
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) == output.size
    assert Image.open(io.BytesIO(data)).size == (64, 48)
    assert not list((tmp_path / "out").glob("*.part"))


class BreakingTransport(httpx.HTTPTransport):
    """Cuts the first subscribe stream after `cuts[0]` frames (a reset), the second after
    `cuts[1]` frames (a clean close); records each subscribe's Last-Event-ID."""

    def __init__(self, cuts: list[int]) -> None:
        super().__init__()
        self.cuts = list(cuts)
        self.last_event_ids: list[str | None] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if not request.url.path.endswith("/subscribe"):
            return response
        self.last_event_ids.append(request.headers.get("last-event-id"))
        if not self.cuts:
            return response
        limit, reset = self.cuts.pop(0), len(self.cuts) == 1
        return httpx.Response(response.status_code, headers=response.headers,
                              stream=CutStream(response, limit, reset), request=request)


class CutStream(httpx.SyncByteStream):
    def __init__(self, response: httpx.Response, frames: int, reset: bool) -> None:
        self.response, self.frames, self.reset = response, frames, reset

    def __iter__(self) -> Iterator[bytes]:
        buffer = b""
        seen = 0
        for chunk in self.response.iter_raw():
            buffer += chunk
            while b"\n\n" in buffer:
                frame, buffer = buffer.split(b"\n\n", 1)
                yield frame + b"\n\n"
                seen += frame.startswith(b"id:")
                if seen == self.frames:
                    if self.reset:
                        raise httpx.ReadError("connection reset by the test")
                    return

    def close(self) -> None:
        self.response.close()


def test_watch_resumes_after_broken_connections_without_missing_or_repeating(
        suite: Suite, photo_file: Path) -> None:
    transport = BreakingTransport(cuts=[3, 2])
    with Client(suite.gateway_url, token=suite.token, transport=transport) as client:
        workflow_id = create(client, photo_file)
        events = list(client.workflows.watch(workflow_id))

    seqs = [e.seq for e in events]
    assert len(transport.last_event_ids) >= 3, "two cuts, so at least three connections"
    # The first connection asks for a snapshot; each reconnect resumes after the last event seen.
    assert transport.last_event_ids[0] is None
    assert transport.last_event_ids[1] == str(seqs[2]) and transport.last_event_ids[2] == str(seqs[4])
    assert isinstance(events[-1], StatusEvent) and events[-1].status == "completed"
    reference = [i for i in replayed_ids(suite, workflow_id) if i > seqs[0]]
    assert seqs[1:] == reference, "every event after the snapshot, once, in order"


def test_cancel_and_typed_errors(client: Client, suite: Suite, photo_file: Path) -> None:
    workflow_id = create(client, photo_file)
    cancelled = client.workflows.cancel(workflow_id)
    # A running workflow is interrupted on its runner: the cancel answer may still say running.
    assert cancelled.id == workflow_id
    assert cancelled.status in ("accepted", "uploaded", "queued", "running", "cancelled")
    [last] = list(client.workflows.watch(workflow_id))[-1:]
    assert isinstance(last, StatusEvent) and last.status == "cancelled"

    with pytest.raises(BadRequestError) as again:
        client.workflows.cancel(workflow_id)
    assert again.value.status == 400 and again.value.reason and "cancelled" in again.value.message

    with pytest.raises(NotFoundError) as no_outputs:
        client.workflows.outputs(workflow_id)
    assert no_outputs.value.reason == "WORKFLOW_NOT_COMPLETED"

    with pytest.raises(NotFoundError) as missing:
        client.workflows.get("00000000-0000-0000-0000-000000000000")
    assert missing.value.status == 404 and missing.value.body["status"] == 404

    with pytest.raises(BadRequestError) as bad_choice:
        create(client, photo_file, choices={"method": "cubic"})
    assert "#method" in str(bad_choice.value.body)

    with Client(suite.gateway_url, token="cf_not_a_token") as stranger, pytest.raises(AuthenticationError) as denied:
        stranger.user.get()
    assert denied.value.status == 401 and denied.value.message


def test_the_same_idempotency_key_replays_the_first_create(client: Client, photo_file: Path) -> None:
    first = client.workflows.create(WORKFLOW, name="once", params={"prefix": "once"}, files={"photo": photo_file},
                                    idempotency_key="sdk-test-key-1")
    again = client.workflows.create(WORKFLOW, name="once", params={"prefix": "once"}, files={"photo": photo_file},
                                    idempotency_key="sdk-test-key-1")
    assert again.id == first.id
    with pytest.raises(ConflictError) as other:
        client.workflows.create(WORKFLOW, name="other", params={"prefix": "once"}, files={"photo": photo_file},
                                idempotency_key="sdk-test-key-1")
    assert other.value.status == 409
    client.workflows.cancel(first.id)
    assert client.workflows.wait(first.id).status in ("cancelled", "completed")


def test_list_iterates_every_page_once(client: Client, photo_file: Path) -> None:
    # Tags only a registered runner that never connects has: the workflows wait unassigned, so
    # each cancel ends them at once (the suite's runner could otherwise complete one first).
    parked = client.runners.create(name="parked", endpoint="http://127.0.0.1:9/", tags=["parked"])
    ids = [create(client, png(8, 8), name=f"listed {n}", tags=["parked"]) for n in range(3)]
    for workflow_id in ids:
        client.workflows.cancel(workflow_id)
    client.runners.delete(parked.id)
    assert [client.workflows.wait(workflow_id).status for workflow_id in ids] == ["cancelled"] * 3
    whole, total = client.workflows.page(1, 100, status="cancelled")
    assert total == len(whole) and set(ids) <= {wf.id for wf in whole}

    paged = list(client.workflows.list(status="cancelled", per_page=2))
    assert [wf.id for wf in paged] == [wf.id for wf in whole]
    assert [wf.id for wf in client.workflows.list(per_page=2, limit=3)] == [wf.id for wf in
                                                                           client.workflows.page(1, 3)[0]]
    assert ids[::-1] == [wf.id for wf in paged[:3]], "newest first"


def test_user(client: Client) -> None:
    user = client.user.get()
    assert user.id and user.tier and user.created_at is not None


async def test_async_client_runs_watches_and_downloads(suite: Suite, photo_file: Path, tmp_path: Path) -> None:
    async with AsyncClient(suite.gateway_url, token=suite.token) as client:
        created = await client.workflows.create(WORKFLOW, name="async", params={"prefix": "async_cat"},
                                                files={"photo": ("cat.png", png(40, 30))})
        kinds = [event.kind async for event in client.workflows.watch(created.id, from_start=True)]
        assert kinds[0] == "status" and "progress" in kinds
        record = await client.workflows.wait(created.id)
        assert record.status == "completed"
        [output] = await client.workflows.outputs(created.id)
        path = await client.workflows.download(output, tmp_path)
        assert path.name.startswith("async_cat_") and path.read_bytes()[:8] == PNG_MAGIC
        listed = [wf.id async for wf in client.workflows.list(limit=1)]
        assert listed == [created.id]
