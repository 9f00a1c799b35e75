"""Replays the recorded ComfyUI 0.3.64 scenarios against the double and compares the answers.

All scenarios run in recording order (10 was recorded before 09) against one double, because
the real server's state carried over between them too (prompt counter, output cache, history,
files in input/ and output/).
What is compared, and how strictly, is described in recording.py and replay.py.

Deliberate deviations from a plain replay, each forced by a race in the recording:

- 06: the global interrupt of prompt B was sent the moment `executing 11` arrived, and landed on
  node 11 (5 ms) because the real worker had not yet reached its interrupt check. The double
  checks right after sending `executing`, so the replay sends that interrupt while node 10 runs,
  which yields the recorded messages exactly.
- 06b: how many progress ticks arrive before the interrupt lands is timing; runs of ticks are
  compared as one item (node, max, first value, not completed).
- Uploaded files: the recordings keep only their size and hash, so the replay uploads its own
  images of the recorded size and mode; their bytes, and files derived from them, are not
  compared by hash (everything else about them is).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from PIL import Image

from .app import ComfyUIDouble
from .errors import SITE_PACKAGES
from .nodes import OBJECT_INFO
from .recording import Matcher, load_scenario, load_workflow, transcripts_dir
from .replay import Options
from .replayer import Replayer

# The async tests share the module-scoped double, hence its event loop.
in_module_loop = pytest.mark.asyncio(loop_scope="module")

REPO = Path(__file__).resolve().parents[2]

# Recorded upload (sha256) -> mode and size of the file, as its /view response shows it.
UPLOADED_IMAGES = {
    "d708adf7acbfab3e47a6c3e2f1ad201472629be6ff1e93761580e36cd303d5f3": ("RGB", (32, 24)),
    "e7b13773b2c8f7395b8784e1b48b82b5257e47b6ad6384b0c22af64a7cabc56f": ("RGBA", (40, 30)),
    "b83e0c26c0609851d491e2f6149fc6faa94a7cf94f1d9bcfa550b6c4d3713b6b": ("RGB", (8, 8)),
    "7f83c828d3178cb55ed8890e4a62ef3ab119cbf05f9c1a4c69ee744e956ff9d9": ("RGBA", (8, 8)),
}


def make_upload(field: dict[str, Any]) -> bytes:
    """Bytes standing in for a recorded upload (the transcripts keep only size and hash)."""
    if field["filename"] == "broken.png":
        return b"\x89PNG\r\n\x1a\n" + b"\0" * (field["len"] - 8)  # a PNG signature, then nothing decodable
    mode, size = UPLOADED_IMAGES[field["sha256"]]
    seed = bytes.fromhex(field["sha256"])
    out = io.BytesIO()
    Image.new(mode, size, tuple(seed[: len(mode)])).save(out, format="PNG")
    return out.getvalue()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def double(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ComfyUIDouble]:
    root = tmp_path_factory.mktemp("comfyui")
    (root / "input").mkdir()
    Image.new("RGB", (16, 16), (40, 80, 120)).save(root / "input" / "example.png")  # ships with ComfyUI
    server = ComfyUIDouble(root)
    await server.start()
    yield server
    await server.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture(scope="module")
def matcher(double: ComfyUIDouble) -> Matcher:
    return Matcher(double.folders.root, SITE_PACKAGES)


async def replay(double: ComfyUIDouble, session: aiohttp.ClientSession, matcher: Matcher, name: str,
                 delay_ms: float = 0, overrides: Callable[[list[dict[str, Any]]], dict[int, int]] | None = None,
                 **options: Any) -> None:
    entries = load_scenario(name)
    double.node_delay_ms = delay_ms
    try:
        sync = overrides(entries) if overrides else {}
        await Replayer(session, double.url, matcher, make_upload, Options(sync_overrides=sync, **options)).run(entries)
    finally:
        double.node_delay_ms = 0


def index_of(entries: list[dict[str, Any]], predicate: Callable[[dict[str, Any]], bool]) -> int:
    matches = [i for i, e in enumerate(entries) if predicate(e)]
    assert len(matches) == 1, f"expected one matching entry, found {len(matches)}"
    return matches[0]


def interrupt_b_while_node_10_runs(entries: list[dict[str, Any]]) -> dict[int, int]:
    prompt_b = "dba84228-9f3e-48e0-a450-ce94f3d928d6"
    action = index_of(entries, lambda e: e["dir"] == "http_req" and e["path"] == "/interrupt" and "body" not in e)
    cutoff = index_of(entries, lambda e: e["dir"] == "ws" and e["frame"] == "text"
                      and e["msg"]["type"] == "executing" and e["msg"]["data"].get("node") == "10"
                      and e["msg"]["data"].get("prompt_id") == prompt_b)
    return {action: cutoff}


@in_module_loop
async def test_00_server_info(double: ComfyUIDouble, session: aiohttp.ClientSession, matcher: Matcher) -> None:
    await replay(double, session, matcher, "00_server_info")


@in_module_loop
async def test_01_basic_success(double: ComfyUIDouble, session: aiohttp.ClientSession, matcher: Matcher) -> None:
    # Also checks that the saved PNG is byte-identical to the real server's (no opaque bodies).
    await replay(double, session, matcher, "01_basic_success")


@in_module_loop
async def test_02_cached_rerun(double: ComfyUIDouble, session: aiohttp.ClientSession, matcher: Matcher) -> None:
    await replay(double, session, matcher, "02_cached_rerun")


@in_module_loop
async def test_03_upload_and_scale(double: ComfyUIDouble, session: aiohttp.ClientSession, matcher: Matcher) -> None:
    await replay(double, session, matcher, "03_upload_and_scale", opaque_bodies=("/view",))


@in_module_loop
async def test_04_validation_errors(double: ComfyUIDouble, session: aiohttp.ClientSession,
                                    matcher: Matcher) -> None:
    await replay(double, session, matcher, "04_validation_errors")


@in_module_loop
async def test_05_execution_error(double: ComfyUIDouble, session: aiohttp.ClientSession, matcher: Matcher) -> None:
    await replay(double, session, matcher, "05_execution_error")


@in_module_loop
async def test_06_interrupt_and_queue(double: ComfyUIDouble, session: aiohttp.ClientSession,
                                      matcher: Matcher) -> None:
    await replay(double, session, matcher, "06_interrupt_and_queue", delay_ms=400,
                 overrides=interrupt_b_while_node_10_runs)


@in_module_loop
async def test_06b_interrupt_mid_node(double: ComfyUIDouble, session: aiohttp.ClientSession,
                                      matcher: Matcher) -> None:
    await replay(double, session, matcher, "06b_interrupt_mid_node", delay_ms=20, collapse_ticks=True)


@in_module_loop
async def test_07a_ws_binary_legacy(double: ComfyUIDouble, session: aiohttp.ClientSession, matcher: Matcher) -> None:
    await replay(double, session, matcher, "07a_ws_binary_legacy")


@in_module_loop
async def test_07b_ws_binary_with_feature_flags(double: ComfyUIDouble, session: aiohttp.ClientSession,
                                                matcher: Matcher) -> None:
    await replay(double, session, matcher, "07b_ws_binary_with_feature_flags")


@in_module_loop
async def test_08_no_client_id(double: ComfyUIDouble, session: aiohttp.ClientSession, matcher: Matcher) -> None:
    await replay(double, session, matcher, "08_no_client_id")


@in_module_loop
async def test_10_prompt_id_and_partial(double: ComfyUIDouble, session: aiohttp.ClientSession,
                                        matcher: Matcher) -> None:
    await replay(double, session, matcher, "10_prompt_id_and_partial")


@in_module_loop
async def test_09_timing(double: ComfyUIDouble, session: aiohttp.ClientSession, matcher: Matcher) -> None:
    # Recorded after 10 (its numbers follow 10's), so it runs after 10 here too.
    await replay(double, session, matcher, "09_timing")


@in_module_loop
async def test_11_misc(double: ComfyUIDouble, session: aiohttp.ClientSession, matcher: Matcher) -> None:
    # Two prompts the recording does not show were submitted before 11 (65 follows 62): renumber.
    await replay(double, session, matcher, "11_misc", opaque_bodies=("/view",), renumber=True)


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_file())


# The invalid workflows of 04 and the error types they must produce (error.type, node error types).
INVALID_WORKFLOWS = {
    "04_invalid_bad_linked_input": ("prompt_outputs_failed_validation", ["bad_linked_input"]),
    "04_invalid_custom_validation_failed_missing_file": ("prompt_outputs_failed_validation",
                                                         ["custom_validation_failed"]),
    "04_invalid_invalid_input_type": ("prompt_outputs_failed_validation", ["invalid_input_type"]),
    "04_invalid_link_to_missing_node": ("prompt_outputs_failed_validation", ["exception_during_validation"]),
    "04_invalid_missing_class_type": ("invalid_prompt", []),
    "04_invalid_prompt_no_outputs": ("prompt_no_outputs", []),
    "04_invalid_required_input_missing": ("prompt_outputs_failed_validation", ["required_input_missing"]),
    "04_invalid_return_type_mismatch": ("prompt_outputs_failed_validation", ["return_type_mismatch"]),
    "04_invalid_two_errors_two_nodes": ("prompt_outputs_failed_validation",
                                        ["value_not_in_list", "value_smaller_than_min", "value_smaller_than_min"]),
    "04_invalid_unknown_class_type": ("invalid_prompt", []),
    "04_invalid_value_bigger_than_max": ("prompt_outputs_failed_validation", ["value_bigger_than_max"]),
    "04_invalid_value_not_in_list": ("prompt_outputs_failed_validation", ["value_not_in_list"]),
    "04_invalid_value_smaller_than_min": ("prompt_outputs_failed_validation", ["value_smaller_than_min"]),
}


@in_module_loop
@pytest.mark.parametrize("name", sorted(INVALID_WORKFLOWS))
async def test_invalid_workflow_files(double: ComfyUIDouble, session: aiohttp.ClientSession, name: str) -> None:
    """Each 04_invalid_* workflow file is rejected with the error its name announces."""
    async with session.post(double.url + "/prompt", json={"prompt": load_workflow(name)}) as resp:
        assert resp.status == 400
        body = await resp.json()
    error_type, node_error_types = INVALID_WORKFLOWS[name]
    assert body["error"]["type"] == error_type
    found = sorted(e["type"] for node in body["node_errors"].values() for e in node["errors"])
    assert found == node_error_types


@in_module_loop
async def test_full_object_info(double: ComfyUIDouble, session: aiohttp.ClientSession) -> None:
    """GET /object_info: the recorded subset, with LoadImage listing the images now in input/."""
    async with session.get(double.url + "/api/object_info") as resp:
        assert (resp.status, resp.content_type) == (200, "application/json")
        body = await resp.json()
    assert list(body) == list(OBJECT_INFO)
    inputs = files_in(Path(double.folders.input))
    for name, info in body.items():
        expected = json.loads(json.dumps(OBJECT_INFO[name]))
        if name == "LoadImage":
            expected["input"]["required"]["image"][0] = inputs
        assert info == expected, name


def test_transcripts_are_the_recorded_ones() -> None:
    """The copy in the repo matches the shared originals when those are around."""
    shared = REPO.parent / "shared" / "comfyui-transcripts"
    ours = transcripts_dir()
    if not shared.is_dir() or shared.resolve() == ours.resolve():
        pytest.skip("no separate shared transcripts folder on this machine")
    for original in sorted(shared.glob("*.json*")):
        assert hashlib.sha256((ours / original.name).read_bytes()).digest() == \
            hashlib.sha256(original.read_bytes()).digest(), original.name


@in_module_loop
async def test_cli_process(tmp_path: Path) -> None:
    """`python -m tests.comfyui_double` serves until SIGTERM and creates its folders."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.comfyui_double", "--port", "0", "--root", str(tmp_path / "root"),
        "--node-delay-ms", "5", cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        match = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        assert match, line
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{match.group(1)}/system_stats") as resp:
            assert resp.status == 200
            assert (await resp.json())["system"]["comfyui_version"] == "0.3.64"
        assert {p.name for p in (tmp_path / "root").iterdir()} == {"input", "output", "temp"}
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    assert not (tmp_path / "root" / "temp").exists()  # wiped on exit, as ComfyUI does
