"""Outputs of every kind: which files a node's UI output names, their content types, and what
ends up in storage (pure core, the copy with stand-ins, and end to end against the double)."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

import pytest
from comfyfleet.storage.v1 import object_pb2

from services.runner import events
from services.runner.comfyui_client import Download
from services.runner.comfyui_messages import OutputFile, PromptSucceeded, PromptTracker, outputs_of_node
from services.runner.errors import ComfyUIServerError
from services.runner.media_types import content_type_for
from services.runner.output_store import store_outputs
from tests.runner.conftest import MakeHarness, assignment

# UI outputs as ComfyUI nodes write them (SaveImage, SaveAnimatedWEBP, SaveVideo, SaveAudio,
# VHS_VideoCombine, a text saver, Preview3D), with entries that are not files mixed in.
UI_OUTPUTS: list[tuple[str, dict[str, Any], list[tuple[str, str, str]]]] = [
    ("images", {"images": [{"filename": "a_00001_.png", "subfolder": "", "type": "output"},
                           {"filename": "a_00002_.png", "subfolder": "", "type": "output"}]},
     [("a_00001_.png", "", "output"), ("a_00002_.png", "", "output")]),
    ("animated webp", {"images": [{"filename": "anim_00001_.webp", "subfolder": "", "type": "output"}],
                       "animated": [True]},
     [("anim_00001_.webp", "", "output")]),
    ("video", {"images": [{"filename": "clip_00001_.mp4", "subfolder": "video", "type": "output"}],
               "animated": [True]},
     [("clip_00001_.mp4", "video", "output")]),
    ("gifs (VHS)", {"gifs": [{"filename": "v_00001.webm", "subfolder": "", "type": "output", "format": "video/webm",
                              "frame_rate": 8.0, "workflow": "v_00001.png", "fullpath": "/x/v_00001.webm"}]},
     [("v_00001.webm", "", "output")]),
    ("audio", {"audio": [{"filename": "sound_00001_.flac", "subfolder": "audio", "type": "output"}]},
     [("sound_00001_.flac", "audio", "output")]),
    ("text file and text", {"text": ["a caption, not a file"],
                            "files": [{"filename": "notes.txt", "subfolder": "", "type": "output"}]},
     [("notes.txt", "", "output")]),
    ("preview in temp", {"images": [{"filename": "ComfyUI_temp_abcde_00001_.png", "subfolder": "", "type": "temp"}]},
     [("ComfyUI_temp_abcde_00001_.png", "", "temp")]),
    ("3D result paths are not files", {"result": ["mesh.glb", None, None]}, []),
    ("nothing", {}, []),
    ("not a dict", None, []),  # type: ignore[list-item]
    ("entry without a filename", {"images": [{"subfolder": "", "type": "output"}, {"filename": ""}]}, []),
    ("no type means output", {"images": [{"filename": "x.png"}]}, [("x.png", "", "output")]),
]


@pytest.mark.parametrize(("ui", "expected"), [(ui, exp) for _, ui, exp in UI_OUTPUTS],
                         ids=[name for name, _, _ in UI_OUTPUTS])
def test_every_list_of_files_under_any_key_is_an_output(ui: dict[str, Any], expected: list[tuple[str, ...]]) -> None:
    assert [(f.filename, f.subfolder, f.type) for f in outputs_of_node("9", ui)] == expected
    assert all(f.node_id == "9" for f in outputs_of_node("9", ui))


@pytest.mark.parametrize(
    ("filename", "served", "expected"),
    [
        ("a.png", "image/png", "image/png"),
        ("A.PNG", None, "image/png"),
        ("anim.webp", "application/octet-stream", "image/webp"),
        ("x.gif", "", "image/gif"),
        ("clip.mp4", "application/octet-stream", "video/mp4"),
        ("clip.webm", "application/octet-stream", "video/webm"),
        ("sound.flac", "application/octet-stream", "audio/flac"),
        ("sound.wav", "audio/x-wav", "audio/wav"),
        ("speech.mp3", None, "audio/mpeg"),
        ("notes.txt", "text/plain; charset=utf-8", "text/plain"),
        ("mesh.glb", "application/octet-stream", "model/gltf-binary"),
        ("page.html", "application/octet-stream", "application/octet-stream"),  # /view forces it; so do we
        ("strange.xyz", "chemical/x-xyz", "chemical/x-xyz"),  # unknown to us: what ComfyUI served
        ("noext", None, "application/octet-stream"),
    ],
)
def test_content_type_comes_from_the_extension(filename: str, served: str | None, expected: str) -> None:
    assert content_type_for(filename, served) == expected


def test_a_cached_rerun_still_names_its_outputs() -> None:
    # The recorded fully cached rerun re-sends `executed` with the first run's filename.
    tracker = PromptTracker("p", {"3": "SaveImage"})
    tracker.feed({"type": "execution_start", "data": {"prompt_id": "p"}}, 0.0)
    tracker.feed({"type": "execution_cached", "data": {"prompt_id": "p", "nodes": ["1", "2", "3"]}}, 0.0)
    tracker.feed({"type": "executed", "data": {"prompt_id": "p", "node": "3", "output": {
        "images": [{"filename": "wf01_invert_00001_.png", "subfolder": "", "type": "output"}]}}}, 0.0)
    steps = tracker.feed({"type": "execution_success", "data": {"prompt_id": "p"}}, 0.0)
    assert steps == [PromptSucceeded((OutputFile("3", "wf01_invert_00001_.png", "", "output"),))]


class FakeViews:
    """`ComfyUI.view` over a dict of (subfolder, filename) -> bytes, served as octet-stream."""

    def __init__(self, files: dict[tuple[str, str], bytes]) -> None:
        self.files = files
        self.requested: list[OutputFile] = []

    @contextlib.asynccontextmanager
    async def view(self, output: OutputFile) -> AsyncIterator[Download]:
        self.requested.append(output)
        data = self.files.get((output.subfolder, output.filename))
        if data is None:
            raise ComfyUIServerError("GET /view: HTTP 404", status=404, text="")

        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, len(data), 7):
                yield data[start : start + 7]

        yield Download(content_type="application/octet-stream", chunks=chunks())


class DictStore:
    def __init__(self) -> None:
        self.objects: dict[str, tuple[bytes, str]] = {}

    def get(self, key: str) -> Any:
        raise NotImplementedError

    async def put(self, key: str, content_type: str, chunks: AsyncIterable[bytes]) -> object_pb2.ObjectRef:
        data = b"".join([c async for c in chunks])
        self.objects[key] = (data, content_type)
        return object_pb2.ObjectRef(key=key, size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest(),
                                    content_type=content_type)


async def test_video_audio_and_text_outputs_are_stored_with_type_and_size() -> None:
    files = {("video", "clip_00001_.mp4"): b"\x00\x00\x00\x18ftypmp42" + b"v" * 100,
             ("audio", "sound_00001_.flac"): b"fLaC" + b"a" * 50,
             ("", "notes.txt"): b"hello\n"}
    outputs = [OutputFile("4", "clip_00001_.mp4", "video", "output"),
               OutputFile("5", "sound_00001_.flac", "audio", "output"),
               OutputFile("6", "notes.txt", "", "output")]
    store, emitted = DictStore(), []
    failure = await store_outputs(outputs, "outputs/wf/", FakeViews(files), store, emitted.append)  # type: ignore[arg-type]

    assert failure is None
    stored = [(e.output_stored.node_id, e.output_stored.filename, e.output_stored.object.content_type,
               e.output_stored.object.size_bytes) for e in emitted]
    assert stored == [("4", "clip_00001_.mp4", "video/mp4", 112), ("5", "sound_00001_.flac", "audio/flac", 54),
                      ("6", "notes.txt", "text/plain", 6)]
    assert store.objects["outputs/wf/5/sound_00001_.flac"] == (files[("audio", "sound_00001_.flac")], "audio/flac")


async def test_no_outputs_is_success_with_nothing_stored() -> None:
    store, emitted = DictStore(), []
    assert await store_outputs([], "outputs/wf/", FakeViews({}), store, emitted.append) is None  # type: ignore[arg-type]
    assert emitted == [] and store.objects == {}


async def test_an_output_that_cannot_be_fetched_fails_the_workflow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("services.runner.output_store.RETRY_DELAY_S", 0.0)
    views = FakeViews({})
    emitted: list[events.RunnerEvent] = []
    failure = await store_outputs([OutputFile("4", "gone.mp4", "", "output")], "outputs/wf/", views,  # type: ignore[arg-type]
                                  DictStore(), emitted.append)
    assert failure is not None and failure.failed.failure.exception_type == "OutputStoreFailed"
    assert "gone.mp4" in failure.failed.failure.exception_message
    assert len(views.requested) == 3 and emitted == []


CHAIN_WITH_PREVIEW = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 2, "color": 65280}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "again/rerun"}},
    "3": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
}


async def test_a_cached_rerun_on_comfyui_delivers_the_same_outputs_again(harness: MakeHarness) -> None:
    h = await harness()
    h.scheduler.assign(assignment("wf-first", CHAIN_WITH_PREVIEW))
    assert await h.terminal("wf-first") == "completed"
    h.scheduler.assign(assignment("wf-again", CHAIN_WITH_PREVIEW))
    assert await h.terminal("wf-again") == "completed"

    first = {(o.node_id, o.filename) for o in h.scheduler.events("wf-first", "output_stored")}
    again = h.scheduler.events("wf-again", "output_stored")
    assert {(o.node_id, o.filename) for o in again} == first
    assert {f for n, f in first if n == "2"} == {"rerun_00001_.png", "rerun_00002_.png"}  # a batch of two
    assert len([f for n, f in first if n == "3"]) == 2  # the previews, from temp/
    # ComfyUI served the second run entirely from its cache (no node ran, no new file) ...
    assert "executing" not in h.scheduler.kinds("wf-again")
    assert [log.message for log in h.scheduler.events("wf-again", "log")] == [
        "served from ComfyUI's cache: node(s) 1, 2, 3"]
    assert sorted(p.name for p in (h.root / "output" / "again").iterdir()) == ["rerun_00001_.png",
                                                                                "rerun_00002_.png"]
    # ... and still the user gets every file, with the same bytes, under the new workflow.
    for o in again:
        data, content_type = h.storage.objects[o.object.key]
        assert o.object.key.startswith("outputs/wf-again/")
        assert content_type == "image/png" and o.object.size_bytes == len(data) > 0
        assert data == h.storage.objects[f"outputs/wf-first/{o.node_id}/{o.filename}"][0]


async def test_a_workflow_whose_output_node_writes_no_file_completes_with_no_outputs(harness: MakeHarness) -> None:
    h = await harness()
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "SaveImageWebsocket", "inputs": {"images": ["1", 0]}},
    }
    h.scheduler.assign(assignment("wf-nofiles", prompt))
    assert await h.terminal("wf-nofiles") == "completed"
    assert h.scheduler.events("wf-nofiles", "output_stored") == []
    assert h.scheduler.kinds("wf-nofiles")[-1] == "completed"
