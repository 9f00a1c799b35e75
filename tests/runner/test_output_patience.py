"""Storing outputs while storage restarts: a runner waits for storage (up to
STORAGE_PATIENCE_S) instead of failing finished work after three quick tries; other storage
errors still fail after three (found by tests/faults/test_storage_faults.py)."""

from __future__ import annotations

from collections.abc import AsyncIterable

import pytest
from comfyfleet.storage.v1 import object_pb2

from services.runner import events
from services.runner.comfyui_messages import OutputFile
from services.runner.errors import StorageError
from services.runner.output_store import store_outputs
from services.runner.storage_client import UNAVAILABLE
from tests.runner.test_outputs import DictStore, FakeViews

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
    monkeypatch.setattr("services.runner.output_store.STORAGE_PATIENCE_S", 0.05)
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
