"""Outputs read from ComfyUI's own folders (`--comfyui-dir`) instead of GET /view."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Any

import pytest

from services.runner import comfyui_client
from services.runner.comfyui_client import CHUNK_BYTES, ComfyUIClient
from services.runner.comfyui_files import INLINE_READ_BYTES, ComfyUIFolders
from services.runner.comfyui_messages import OutputFile
from tests.comfyui_double.app import ComfyUIDouble
from tests.runner.conftest import MakeHarness, assignment
from tests.runner.test_outputs import CHAIN_WITH_PREVIEW


def _nothing_listening() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


async def _read(client: ComfyUIClient, output: OutputFile) -> tuple[str, list[bytes]]:
    async with client.view(output) as download:
        return download.content_type, [chunk async for chunk in download.chunks]


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


async def test_outputs_and_previews_are_read_from_the_folders_without_asking_comfyui(tmp_path: Path) -> None:
    _write(tmp_path / "output" / "scaled" / "wf_00001_.png", b"png bytes")
    _write(tmp_path / "temp" / "ComfyUI_temp_abcde_00001_.webp", b"webp bytes")
    big = os.urandom(2 * CHUNK_BYTES + 5)
    _write(tmp_path / "output" / "clip.mp4", big)
    # Nothing listens at the URL: every byte below came from the folders.
    client = ComfyUIClient(_nothing_listening(), folders=ComfyUIFolders(str(tmp_path)))
    try:
        saved = OutputFile("9", "wf_00001_.png", "scaled", "output")
        assert await _read(client, saved) == ("image/png", [b"png bytes"])
        assert await _read(client, OutputFile("3", "ComfyUI_temp_abcde_00001_.webp", "", "temp")) == (
            "image/webp", [b"webp bytes"])
        content_type, chunks = await _read(client, OutputFile("9", "clip.mp4", "", "output"))
        assert content_type == "video/mp4"
        # the first bit read at once, the rest in chunks (in a worker thread)
        assert [len(c) for c in chunks] == [INLINE_READ_BYTES, CHUNK_BYTES, len(big) - INLINE_READ_BYTES - CHUNK_BYTES]
        assert b"".join(chunks) == big
    finally:
        await client.close()


@pytest.mark.parametrize("output", [
    OutputFile("1", "../secret.png", "", "output"),  # /view: 400
    OutputFile("1", "/etc/passwd", "", "output"),  # /view: 400
    OutputFile("1", "x.png", "../../etc", "output"),  # /view: 403, the subfolder leaves the folder
    OutputFile("1", "x.png [temp]", "", "output"),  # an annotated name: /view reads another folder
    OutputFile("1", "x.png", "", "input"),  # we uploaded inputs; we never copy them back
    OutputFile("1", "x.png", "", "nonsense"),  # /view: 400
    OutputFile("1", "", "", "output"),
])
def test_what_view_would_refuse_or_treat_specially_is_left_to_view(tmp_path: Path, output: OutputFile) -> None:
    assert ComfyUIFolders(str(tmp_path)).path(output) is None


def test_names_are_found_as_view_finds_them(tmp_path: Path) -> None:
    folders = ComfyUIFolders(str(tmp_path))
    assert folders.path(OutputFile("1", "a.png", "x/y", "output")) == str(tmp_path / "output" / "x" / "y" / "a.png")
    # Only the basename of the filename counts (PROTOCOL.md: filename=scaled/x.png is 404).
    assert folders.path(OutputFile("1", "scaled/a.png", "", "output")) == str(tmp_path / "output" / "a.png")
    assert folders.path(OutputFile("1", "a.png", "x/../y", "temp")) == str(tmp_path / "temp" / "y" / "a.png")


async def test_what_is_not_in_the_folder_is_asked_of_comfyui_and_said_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    double = ComfyUIDouble(tmp_path / "comfyui")
    await double.start()
    _write(tmp_path / "comfyui" / "output" / "a.png", b"served")  # where ComfyUI keeps it
    (tmp_path / "elsewhere").mkdir()
    client = ComfyUIClient(double.url, folders=ComfyUIFolders(str(tmp_path / "elsewhere")))  # a wrong folder
    try:
        with caplog.at_level(logging.WARNING, logger="services.runner.comfyui_client"):
            for _ in range(2):
                assert await _read(client, OutputFile("1", "a.png", "", "output")) == ("image/png", [b"served"])
        assert len([r for r in caplog.records if "ComfyUI's folder" in r.getMessage()]) == 1
        (tmp_path / "elsewhere" / "output").mkdir()
        (tmp_path / "elsewhere" / "output" / "a.png").mkdir()  # not a regular file: /view again
        assert await _read(client, OutputFile("1", "a.png", "", "output")) == ("image/png", [b"served"])
    finally:
        await client.close()
        await double.stop()


async def test_a_runner_given_comfyuis_folder_stores_every_output_from_it(
    harness: MakeHarness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[str] = []
    real_open_first = comfyui_client.open_first

    def counting(path: str, chunk_bytes: int) -> Any:
        opened.append(path)
        return real_open_first(path, chunk_bytes)

    monkeypatch.setattr(comfyui_client, "open_first", counting)
    h = await harness(comfyui_dir=str(tmp_path / "comfyui"))  # the folder the double runs in
    h.scheduler.assign(assignment("wf-local", CHAIN_WITH_PREVIEW))
    assert await h.terminal("wf-local") == "completed"
    stored = h.scheduler.events("wf-local", "output_stored")
    assert len(stored) == 4 and len(opened) == 4  # two saved images, two previews: all read from the folders
    for o in stored:
        data, content_type = h.storage.objects[o.object.key]
        folder = "output/again" if o.node_id == "2" else "temp"
        assert data == (tmp_path / "comfyui" / folder / o.filename).read_bytes()
        assert content_type == "image/png" and o.object.size_bytes == len(data)
