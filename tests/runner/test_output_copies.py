"""Outputs copied while the prompt runs: each file from its node's `executed` on, a few at a
time, reported in the order ComfyUI named them (output_store.OutputCopies), with stand-ins for
ComfyUI and storage, then end to end against the double."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator

import pytest
from comfyfleet.storage.v1 import object_pb2

from services.runner.comfyui_client import Download
from services.runner.comfyui_messages import OutputFile
from services.runner.errors import StorageError
from services.runner.output_store import OutputCopies
from tests.runner.conftest import MakeHarness, assignment
from tests.runner.test_outputs import DictStore


def files(n: int, node: str = "9") -> list[OutputFile]:
    return [OutputFile(node, f"img_{i:05d}_.png", "", "output") for i in range(1, n + 1)]


class GatedViews:
    """`ComfyUI.view` that holds each download until the test opens its gate; counts how many
    downloads are open at once."""

    def __init__(self) -> None:
        self.gates: dict[str, asyncio.Event] = {}
        self.open_now = 0
        self.most_open = 0
        self.started: list[str] = []

    def gate(self, filename: str) -> asyncio.Event:
        return self.gates.setdefault(filename, asyncio.Event())

    @contextlib.asynccontextmanager
    async def view(self, output: OutputFile) -> AsyncIterator[Download]:
        self.started.append(output.filename)
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        try:
            await self.gate(output.filename).wait()

            async def chunks() -> AsyncIterator[bytes]:
                yield output.filename.encode()

            yield Download(content_type="image/png", chunks=chunks())
        finally:
            self.open_now -= 1


async def settled() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_copies_run_side_by_side_a_few_at_a_time_and_report_in_the_order_named() -> None:
    views, store, emitted = GatedViews(), DictStore(), []
    copies = OutputCopies("outputs/wf/", views, store, emitted.append, at_once=3)  # type: ignore[arg-type]
    named = files(5)
    copies.add(named[:2])
    await settled()
    assert views.started == [f.filename for f in named[:2]]  # started as soon as named
    copies.add(named)  # the first two again (a cached rerun re-sends them): copied once
    await settled()
    assert views.started == [f.filename for f in named[:3]] and views.most_open == 3
    # The third ends first: nothing is reported until the first two have been.
    views.gate(named[2].filename).set()
    await settled()
    assert emitted == []
    for output in (named[1], named[0]):
        views.gate(output.filename).set()
    await settled()
    assert [e.output_stored.filename for e in emitted] == [f.filename for f in named[:3]]
    for output in named[3:]:
        views.gate(output.filename).set()
    assert await copies.finish() is None
    assert [e.output_stored.filename for e in emitted] == [f.filename for f in named]
    assert sorted(store.objects) == sorted(f"outputs/wf/9/{f.filename}" for f in named)
    assert views.most_open == 3


class FailingStore(DictStore):
    def __init__(self, refuse: str) -> None:
        super().__init__()
        self.refuse = refuse

    async def put(self, key: str, content_type: str, chunks: AsyncIterable[bytes]) -> object_pb2.ObjectRef:
        if key.endswith(self.refuse):
            raise StorageError(f"PutObject {key}: refused", reason="INVALID_ARGUMENT")
        return await super().put(key, content_type, chunks)


async def test_a_copy_that_fails_ends_the_workflow_failed_and_what_follows_is_not_reported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("services.runner.output_store.RETRY_DELAY_S", 0.0)
    views, emitted = GatedViews(), []
    named = files(3)
    store = FailingStore(named[1].filename)
    copies = OutputCopies("outputs/wf/", views, store, emitted.append)  # type: ignore[arg-type]
    copies.add(named)
    for output in named:
        views.gate(output.filename).set()
    failure = await copies.finish()
    assert failure is not None and failure.failed.failure.exception_type == "OutputStoreFailed"
    assert named[1].filename in failure.failed.failure.exception_message
    assert [e.output_stored.filename for e in emitted] == [named[0].filename]


async def test_settle_keeps_what_ends_in_time_and_close_stops_the_rest() -> None:
    views, store, emitted = GatedViews(), DictStore(), []
    copies = OutputCopies("outputs/wf/", views, store, emitted.append)  # type: ignore[arg-type]
    named = files(2)
    copies.add(named)
    views.gate(named[0].filename).set()
    await copies.settle(0.2)  # the second never ends: stopped after the wait
    assert [e.output_stored.filename for e in emitted] == [named[0].filename]
    views.gate(named[1].filename).set()
    copies.add(files(1, node="7"))  # nothing starts once closed
    await settled()
    assert [e.output_stored.filename for e in emitted] == [named[0].filename]
    assert list(store.objects) == [f"outputs/wf/9/{named[0].filename}"] and views.open_now == 0


async def test_close_means_nothing_is_emitted_even_by_a_copy_that_already_ended() -> None:
    views, emitted = GatedViews(), []
    copies = OutputCopies("outputs/wf/", views, DictStore(), emitted.append)  # type: ignore[arg-type]
    named = files(2)
    copies.add(named)
    views.gate(named[1].filename).set()
    await settled()  # the second ended, and waits behind the first
    copies.close()
    views.gate(named[0].filename).set()
    await settled()
    assert emitted == []


async def test_a_copy_stopped_from_outside_ends_the_wait_as_a_failure() -> None:
    views, emitted = GatedViews(), []
    copies = OutputCopies("outputs/wf/", views, DictStore(), emitted.append)  # type: ignore[arg-type]
    copies.add(files(2))
    await settled()
    copies._copies[0].cancel()  # as the loop's shutdown would
    failure = await asyncio.wait_for(copies.finish(), 5)
    assert failure is not None and failure.failed.failure.exception_type == "RunnerError" and emitted == []


TWO_SAVES = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 2, "color": 255}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "early"}},
    "3": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "4": {"class_type": "ImageInvert", "inputs": {"image": ["3", 0]}},
    "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "late"}},
}


async def test_an_output_is_stored_while_the_rest_of_the_prompt_still_runs(harness: MakeHarness) -> None:
    h = await harness(node_delay_ms=150)
    h.scheduler.assign(assignment("wf-early", TWO_SAVES))
    assert await h.terminal("wf-early") == "completed"
    applied = [(e.WhichOneof("kind"), e) for e in h.scheduler.applied_events if e.workflow_id == "wf-early"]
    order = [(kind, e.executing.node_id if kind == "executing" else
              e.output_stored.filename if kind == "output_stored" else "") for kind, e in applied]
    stored = [name for kind, name in order if kind == "output_stored"]
    assert stored == ["early_00001_.png", "early_00002_.png", "late_00001_.png", "late_00002_.png"]
    # Node 2's two images were stored before the nodes after it (150 ms each) had run.
    assert order.index(("output_stored", "early_00002_.png")) < order.index(("executing", "5"))
    assert order[-1] == ("completed", "")


BLEND_FAILS = {  # 05_execution_error.jsonl's prompt: the preview of node 5 is written, then node 3 fails
    "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "ImageBlend", "inputs": {"image1": ["2", 0], "image2": ["1", 0], "blend_factor": 0.5,
                                                 "blend_mode": "nonsense"}},
    "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
    "5": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
}


async def test_what_a_prompt_wrote_before_it_failed_is_kept(harness: MakeHarness) -> None:
    h = await harness()
    h.scheduler.assign(assignment("wf-blend", BLEND_FAILS))
    assert await h.terminal("wf-blend") == "failed"
    kinds = h.scheduler.kinds("wf-blend")
    assert kinds[-1] == "failed" and kinds.count("output_stored") == 1
    (stored,) = h.scheduler.events("wf-blend", "output_stored")
    assert stored.node_id == "5" and stored.object.key in h.storage.objects
    (failed,) = h.scheduler.events("wf-blend", "failed")
    assert failed.failure.node_id == "3" and failed.failure.exception_type == "ValueError"
