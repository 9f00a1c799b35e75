"""The ComfyUI adapter against the double: typed results and the error cases of the recordings."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.runner.comfyui_client import ComfyUIClient
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
