"""A restarted agent stops what an earlier agent left in its ComfyUI (services/runner/orphans.py):
the earlier agent's running prompt is interrupted and its pending ones deleted before the new
agent says Hello; prompts of other clients (a person in ComfyUI's UI) are left alone."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.runner.comfyui_client import ComfyUIClient
from services.runner.orphans import CLIENT_PREFIX, stop_orphans
from tests.comfyui_double.app import ComfyUIDouble
from tests.runner.conftest import chain

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def comfyui(tmp_path: Path) -> AsyncIterator[ComfyUIClient]:
    double = ComfyUIDouble(tmp_path / "comfyui", node_delay_ms=300)  # a prompt of 4 nodes runs > 1 s
    await double.start()
    client = ComfyUIClient(double.url)
    yield client
    await client.close()
    await double.stop()


async def submit(comfyui: ComfyUIClient, client_id: str, prompt_id: str) -> None:
    await comfyui.submit_prompt(chain(4, prompt_id), client_id=client_id, prompt_id=prompt_id)


async def until_running(comfyui: ComfyUIClient, prompt_id: str) -> None:
    for _ in range(200):
        if prompt_id in (await comfyui.queue()).running:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{prompt_id} never started")


async def test_the_earlier_agents_prompts_are_stopped_and_others_kept(comfyui: ComfyUIClient) -> None:
    earlier, person = f"{CLIENT_PREFIX}dead-agent", "a-person-in-the-ui"
    await submit(comfyui, earlier, "old-running")
    await until_running(comfyui, "old-running")
    await submit(comfyui, earlier, "old-pending")
    await submit(comfyui, person, "theirs")
    await submit(comfyui, earlier, "old-pending-2")

    assert await stop_orphans(comfyui, f"{CLIENT_PREFIX}new-agent") == 3

    queue = await comfyui.queue()  # once it returns, none of the earlier agent's prompts runs
    assert not any(queue.holds(p) for p in ("old-running", "old-pending", "old-pending-2"))
    assert queue.holds("theirs")
    history = await comfyui.history("old-running")
    assert history is not None and history["status"]["status_str"] == "error"  # interrupted, not finished
    assert await comfyui.history("old-pending") is None  # never ran


async def test_the_agents_own_prompts_and_an_empty_comfyui_are_left_alone(comfyui: ComfyUIClient) -> None:
    me = f"{CLIENT_PREFIX}me"
    assert await stop_orphans(comfyui, me) == 0
    await submit(comfyui, me, "mine")
    assert await stop_orphans(comfyui, me) == 0
    assert (await comfyui.queue()).holds("mine")


async def test_an_unreachable_comfyui_has_nothing_to_stop() -> None:
    client = ComfyUIClient("http://127.0.0.1:9")  # nothing listens on the discard port
    try:
        assert await stop_orphans(client, f"{CLIENT_PREFIX}me") == 0
    finally:
        await client.close()
