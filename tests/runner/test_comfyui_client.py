"""The ComfyUI adapter against the double: typed results and the error cases of the recordings."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from services.runner.comfyui_client import ComfyUIClient, _unwanted
from services.runner.comfyui_messages import OutputFile
from services.runner.errors import ComfyUIRejected, ComfyUIServerError, ComfyUIUnreachable
from tests.comfyui_double.app import ComfyUIDouble
from tests.comfyui_double.nodes import OBJECT_INFO
from tests.runner.conftest import png


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[ComfyUIClient]:
    double = ComfyUIDouble(tmp_path / "comfyui")
    await double.start()
    client = ComfyUIClient(double.url)
    yield client
    await client.close()
    await double.stop()


async def chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def test_version_digest_and_empty_answers(client: ComfyUIClient) -> None:
    assert await client.comfyui_version() == "0.3.64"
    info = await client.object_info()
    assert len(info.digest) == 64
    assert sorted(info.schemas) == sorted(OBJECT_INFO)  # every class of the double, parsed
    width = info.schemas["EmptyImage"].input("width")
    assert width is not None and (width.type, width.is_widget, width.config["min"]) == ("INT", True, 1)
    blend = info.schemas["ImageBlend"].input("blend_mode")  # the newer COMBO dialect
    assert blend is not None and blend.type == "COMBO" and blend.options is not None and "screen" in blend.options
    assert info.schemas["SaveImage"].output_node and not info.schemas["ImageInvert"].output_node
    assert await client.history("unknown") is None  # 200 {} is "not finished / unknown"
    queue = await client.queue()
    assert (queue.running, queue.pending) == ((), ())
    await client.delete_pending(["unknown"])  # empty 200 bodies are not parsed
    await client.interrupt("unknown")


async def test_upload_returns_the_name_to_use(client: ComfyUIClient) -> None:
    first = await client.upload_image("a b.png", "image/png", chunks(png(2, 2, (0, 0, 0))), subfolder="wf")
    again = await client.upload_image("a b.png", "image/png", chunks(png(3, 3, (0, 0, 0))), subfolder="wf")
    assert (first.name, first.subfolder, first.reference) == ("a b.png", "wf", "wf/a b.png")
    assert again.reference == "wf/a b (1).png"  # same name, other bytes: renamed, not overwritten


async def test_prompt_answers(client: ComfyUIClient) -> None:
    with pytest.raises(ComfyUIRejected) as rejected:
        await client.submit_prompt({"1": {"class_type": "NoSuchNode", "inputs": {}}}, client_id="c", prompt_id="p1")
    assert rejected.value.body["error"]["type"] == "invalid_prompt"
    with pytest.raises(ComfyUIServerError) as server_error:
        await client.submit_prompt([{"id": 1}], client_id="c", prompt_id="p2")  # type: ignore[arg-type]
    assert server_error.value.status == 500
    assert server_error.value.text.startswith("500 Internal Server Error")


async def test_view_of_a_missing_file_is_an_error(client: ComfyUIClient) -> None:
    with pytest.raises(ComfyUIServerError) as err:
        async with client.view(OutputFile("1", "missing.png", "", "output")):
            pass
    assert err.value.status == 404


async def test_nothing_listening_is_unreachable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = ComfyUIClient(f"http://127.0.0.1:{port}")
    try:
        with pytest.raises(ComfyUIUnreachable):
            await client.comfyui_version()
        with pytest.raises(ComfyUIUnreachable) as refused:
            await client.submit_prompt({}, client_id="c", prompt_id="p")
        assert refused.value.connect_failed  # certainly not queued: safe to hand back
        with pytest.raises(ComfyUIUnreachable):
            async with client.websocket("c"):
                pass
    finally:
        await client.close()


def _empty_image(color: int) -> dict[str, Any]:
    return {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": color}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": f"c{color}"}}}


async def _prompt_messages(messages: AsyncIterator[dict[str, Any]], prompt_id: str) -> list[dict[str, Any]]:
    """Every message until the prompt's last one (`executing` with node null, PROTOCOL.md §6)."""
    seen = []
    async for message in messages:
        seen.append(message)
        data = message["data"]
        if message["type"] == "executing" and data.get("prompt_id") == prompt_id and data.get("node") is None:
            return seen
    raise AssertionError("the websocket closed")


async def test_a_websocket_for_some_types_yields_only_those_in_order(client: ComfyUIClient) -> None:
    wanted = frozenset({"status", "execution_start", "executing", "executed", "execution_success"})
    async with client.websocket("all") as everything, client.websocket("some", wanted) as some:
        await client.submit_prompt(_empty_image(0), client_id="all", prompt_id="p-all")
        seen = await _prompt_messages(everything, "p-all")
        await client.submit_prompt(_empty_image(1), client_id="some", prompt_id="p-some")
        kept = await _prompt_messages(some, "p-some")
    assert {m["type"] for m in kept} <= wanted
    assert "progress_state" in {m["type"] for m in seen}  # sent, and dropped by the filtered socket

    def of(messages: list[dict[str, Any]], prompt_id: str) -> list[str]:
        return [m["type"] for m in messages if m["data"].get("prompt_id") == prompt_id]

    # The same graph (other values, so nothing cached): the wanted messages, in the same order.
    assert of(kept, "p-some") == [t for t in of(seen, "p-all") if t in wanted]


@pytest.mark.parametrize(
    ("text", "dropped"),
    [
        ('{"type": "progress_state", "data": {"prompt_id": "p"}}', True),  # ComfyUI's shape: told unparsed
        ('{"type": "executing", "data": {"node": "1"}}', False),
        ('{"type":"progress_state","data":{}}', False),  # other spacing: parsed, then judged
        ('{"data": {}, "type": "progress_state"}', False),  # other key order: parsed, then judged
        ('{"type": "progress\\u005fstate", "data": {}}', False),  # an escape in the type: parsed
        ('{"type": "progress_st', False),  # cut short: left to the parser (which drops it)
    ],
)
def test_frames_of_other_types_are_told_by_their_leading_type(text: str, dropped: bool) -> None:
    assert _unwanted(text, frozenset({"status", "executing"})) is dropped
