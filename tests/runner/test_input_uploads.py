"""An assignment's input files go to ComfyUI a few side by side (input_upload.upload_inputs),
with stand-ins for storage and ComfyUI; end to end against the double, two inputs of one name."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator

from comfyfleet.runner.v1 import runner_session_service_pb2 as pb
from comfyfleet.storage.v1 import object_pb2

from services.runner import input_upload
from services.runner.comfyui_client import UploadedImage
from services.runner.errors import ComfyUIServerError, StorageError
from services.runner.storage_client import StoredObject
from tests.runner.conftest import MakeHarness, assignment, png


def inputs(n: int) -> list[pb.InputFile]:
    return [pb.InputFile(param=f"p{i}", filename=f"in{i}.png", object=object_pb2.ObjectRef(key=f"inputs/wf/p{i}"))
            for i in range(n)]


class Store:
    """Storage with every input; `missing` keys are not there."""

    def __init__(self, missing: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.missing = missing

    @contextlib.asynccontextmanager
    async def get(self, key: str) -> AsyncIterator[StoredObject]:
        if key in self.missing:
            raise StorageError(f"GetObject {key}: not found", reason="OBJECT_NOT_FOUND")

        async def chunks() -> AsyncIterator[bytes]:
            yield key.encode()

        yield StoredObject(ref=object_pb2.ObjectRef(key=key, content_type="image/png"), chunks=chunks())


class ComfyUI:
    """Takes uploads, each held until its gate opens (or refused: `refuse`); counts those open."""

    def __init__(self, refuse: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.gates: dict[str, asyncio.Event] = {}
        self.refuse = refuse
        self.open_now = self.most_open = 0
        self.started: list[str] = []
        self.finished: list[str] = []

    def gate(self, filename: str) -> asyncio.Event:
        return self.gates.setdefault(filename, asyncio.Event())

    async def upload_image(self, filename: str, content_type: str, chunks: AsyncIterable[bytes], *,
                           subfolder: str) -> UploadedImage:
        self.started.append(filename)
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        try:
            await self.gate(filename).wait()
            if filename in self.refuse:
                raise ComfyUIServerError("POST /upload/image: HTTP 400", status=400, text="bad image")
            self.finished.append(filename)
            return UploadedImage(name=filename, subfolder=subfolder, type="input")
        finally:
            self.open_now -= 1


async def test_inputs_go_side_by_side_a_few_at_a_time() -> None:
    comfyui = ComfyUI()
    job = asyncio.ensure_future(input_upload.upload_inputs(
        assignment("wf", {}, inputs(6)), comfyui, Store()))  # type: ignore[arg-type]
    for _ in range(20):
        await asyncio.sleep(0)
    assert comfyui.started == [f"in{i}.png" for i in range(input_upload.AT_ONCE)]  # not one by one
    for i in reversed(range(6)):
        comfyui.gate(f"in{i}.png").set()
    names = await job
    assert names == {f"p{i}": f"wf/in{i}.png" for i in range(6)}
    assert comfyui.most_open == input_upload.AT_ONCE


async def test_a_failed_input_stops_the_others_and_the_first_failure_in_order_is_the_event() -> None:
    comfyui = ComfyUI(refuse={"in2.png"})
    job = asyncio.ensure_future(input_upload.upload_inputs(
        assignment("wf", {}, inputs(5)), comfyui, Store(missing={"inputs/wf/p1"})))  # type: ignore[arg-type]
    for _ in range(20):
        await asyncio.sleep(0)
    comfyui.gate("in2.png").set()  # refused; p1 (not in storage) failed before it was sent
    result = await asyncio.wait_for(job, 5)
    assert not isinstance(result, dict)
    failure = result.failed.failure
    assert failure.exception_type == "InputUnavailable" and "'p1'" in failure.exception_message
    assert comfyui.open_now == 0 and comfyui.finished == []  # the uploads under way were stopped


LOAD_TWO = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "$file(a)"}},
    "2": {"class_type": "LoadImage", "inputs": {"image": "$file(b)"}},
    "3": {"class_type": "ImageBlend", "inputs": {"image1": ["1", 0], "image2": ["2", 0], "blend_factor": 0.5,
                                                 "blend_mode": "normal"}},
    "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "two"}},
}


async def test_two_inputs_of_one_name_but_other_bytes_both_reach_comfyui(harness: MakeHarness) -> None:
    h = await harness()
    h.storage.put_bytes("inputs/wf-two/a", png(8, 8, (255, 0, 0)), "image/png")
    h.storage.put_bytes("inputs/wf-two/b", png(8, 8, (0, 0, 255)), "image/png")
    files = [pb.InputFile(param=p, filename="photo.png", object=object_pb2.ObjectRef(key=f"inputs/wf-two/{p}"))
             for p in ("a", "b")]
    h.scheduler.assign(assignment("wf-two", LOAD_TWO, files))
    assert await h.terminal("wf-two") == "completed"
    folder = h.root / "input" / "wf-two"
    assert sorted(p.name for p in folder.iterdir()) == ["photo (1).png", "photo.png"]  # ComfyUI renamed one
    assert {p.read_bytes() for p in folder.iterdir()} == {h.storage.objects[f"inputs/wf-two/{p}"][0] for p in "ab"}
