"""Storing outputs while storage restarts: a runner waits for storage (up to
STORAGE_PATIENCE_S) instead of failing finished work after three quick tries; other storage
errors still fail after three (found by tests/faults/test_storage_faults.py). Reading inputs
waits the same way."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable

import pytest
from comfyfleet.storage.v1 import object_pb2

from services.runner import events
from services.runner.comfyui_messages import OutputFile
from services.runner.errors import StorageError
from services.runner.output_store import store_outputs
from services.runner.storage_client import UNAVAILABLE
from tests.runner.conftest import MakeHarness, assignment, png
from tests.runner.test_outputs import DictStore, FakeViews
from tests.runner.test_runner import LOAD_SCALE_SAVE, photo_input

OUTPUT = OutputFile("9", "a_00001_.png", "", "output")


class FlakyStore(DictStore):
    """Fails the first `failures` puts with `error`, then stores."""

    def __init__(self, failures: int, error: StorageError) -> None:
        super().__init__()
        self.failures = failures
        self.error = error
        self.calls = 0

    async def put(self, key: str, content_type: str, chunks: AsyncIterable[bytes]) -> object_pb2.ObjectRef:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return await super().put(key, content_type, chunks)


@pytest.fixture(autouse=True)
def no_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("services.runner.output_store.RETRY_DELAY_S", 0.0)


async def test_outputs_wait_for_storage_to_come_back() -> None:
    store = FlakyStore(8, StorageError("PutObject k: storage is unavailable", reason=UNAVAILABLE))
    emitted: list[events.RunnerEvent] = []
    failure = await store_outputs([OUTPUT], "outputs/wf/", FakeViews({("", OUTPUT.filename): b"png"}),  # type: ignore[arg-type]
                                  store, emitted.append)
    assert failure is None and store.calls == 9
    assert [e.output_stored.object.key for e in emitted] == ["outputs/wf/9/a_00001_.png"]


async def test_storage_down_past_the_patience_fails_the_workflow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("services.runner.storage_client.STORAGE_PATIENCE_S", 0.05)
    store = FlakyStore(10**9, StorageError("PutObject k: storage is unavailable", reason=UNAVAILABLE))
    failure = await store_outputs([OUTPUT], "outputs/wf/", FakeViews({("", OUTPUT.filename): b"png"}),  # type: ignore[arg-type]
                                  store, lambda _e: None)
    assert failure is not None and failure.failed.failure.exception_type == "OutputStoreFailed"
    assert failure.failed.failure.exception_message == \
        "output a_00001_.png of node 9: PutObject k: storage is unavailable"
    assert store.calls >= 3


async def test_other_storage_errors_fail_after_three_tries() -> None:
    store = FlakyStore(10**9, StorageError("PutObject k: disk full"))
    failure = await store_outputs([OUTPUT], "outputs/wf/", FakeViews({("", OUTPUT.filename): b"png"}),  # type: ignore[arg-type]
                                  store, lambda _e: None)
    assert failure is not None and "disk full" in failure.failed.failure.exception_message
    assert store.calls == 3


async def test_inputs_wait_for_storage_to_come_back(harness: MakeHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    """Storage down when the assignment arrives: the runner keeps trying to read the input
    and the workflow completes once storage is back (it used to fail InputUnavailable at once)."""
    monkeypatch.setattr("services.runner.input_upload.RETRY_DELAY_S", 0.1)
    h = await harness()
    h.storage.put_bytes("inputs/wf-late/photo/cat.png", png(40, 30, (10, 200, 10)), "image/png")
    await h.storage_server.stop()
    h.scheduler.assign(assignment("wf-late", LOAD_SCALE_SAVE, [photo_input("inputs/wf-late/photo/cat.png", "cat.png")]))
    await asyncio.sleep(1.0)
    assert h.scheduler.terminal("wf-late") is None
    await h.storage_server.start()
    assert await h.terminal("wf-late") == "completed"
    assert [o.filename for o in h.scheduler.events("wf-late", "output_stored")]


async def test_inputs_fail_once_storage_stays_away_past_the_patience(
    harness: MakeHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("services.runner.input_upload.RETRY_DELAY_S", 0.05)
    monkeypatch.setattr("services.runner.storage_client.STORAGE_PATIENCE_S", 0.5)
    h = await harness()
    await h.storage_server.stop()
    h.scheduler.assign(assignment("wf-gone", LOAD_SCALE_SAVE, [photo_input("inputs/wf-gone/photo/x.png", "x.png")]))
    assert await h.terminal("wf-gone") == "failed"
    (failed,) = h.scheduler.events("wf-gone", "failed")
    assert failed.failure.exception_type == "InputUnavailable"
    assert "storage is unavailable" in failed.failure.exception_message
