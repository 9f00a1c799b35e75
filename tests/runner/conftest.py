"""Component harness: the runner in-process against the ComfyUI double, a fake scheduler and an
in-memory storage service, each on a real server on port 0. `running_session`: a RunnerSession
alone against a scheduler double, for the session's own tests."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from comfyfleet.runner.v1 import runner_session_service_pb2 as pb
from comfyfleet.runner.v1 import runner_session_service_pb2_grpc as pb_grpc
from comfyfleet.storage.v1 import storage_service_pb2_grpc
from PIL import Image

from services.runner.config import Backoff, RunnerSettings
from services.runner.server import RunningRunner, start_runner
from services.runner.session import RunnerSession
from tests.comfyui_double.app import ComfyUIDouble
from tests.runner.fakes import FakeScheduler, GrpcServer, MemoryStorage, eventually, eventually_async


def png(width: int, height: int, color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format="PNG")
    return buffer.getvalue()


def chain(length: int, prefix: str) -> dict[str, Any]:
    """EmptyImage -> ImageInvert x (length - 2) -> SaveImage: `length` nodes that each run."""
    prompt: dict[str, Any] = {"1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 8, "batch_size": 1,
                                                                          "color": 255}}}
    for n in range(2, length):
        prompt[str(n)] = {"class_type": "ImageInvert", "inputs": {"image": [str(n - 1), 0]}}
    prompt[str(length)] = {"class_type": "SaveImage", "inputs": {"images": [str(length - 1), 0],
                                                                 "filename_prefix": prefix}}
    return prompt


def assignment(workflow_id: str, prompt: dict[str, Any], inputs: list[pb.InputFile] | None = None) -> pb.Assignment:
    return pb.Assignment(
        workflow_id=workflow_id,
        attempt=1,
        prompt_json=json.dumps(prompt),
        inputs=inputs or [],
        output_prefix=f"outputs/{workflow_id}/",
    )


@dataclasses.dataclass
class Harness:
    root: Path
    scheduler: FakeScheduler
    scheduler_server: GrpcServer
    storage: MemoryStorage
    storage_server: GrpcServer
    comfyui: ComfyUIDouble
    runner: RunningRunner | None
    node_delay_ms: float

    async def terminal(self, workflow_id: str, timeout_s: float = 10.0) -> str:
        result: str = await eventually(lambda: self.scheduler.terminal(workflow_id), timeout_s, f"{workflow_id} to end")
        return result

    async def stop_comfyui(self) -> None:
        await self.comfyui.stop()

    async def start_comfyui(self) -> None:
        """A fresh ComfyUI (empty queue and history) on the same port and folders."""
        self.comfyui = ComfyUIDouble(self.root, port=self.comfyui.port, node_delay_ms=self.node_delay_ms)
        await self.comfyui.start()

    async def comfyui_json(self, path: str) -> Any:
        """GET `path` from the double, as a client would."""
        async with aiohttp.ClientSession() as session, session.get(self.comfyui.url + path) as resp:
            assert resp.status == 200
            return await resp.json()

    async def history(self, prompt_id: str) -> Any:
        """The double's /history entry of a finished prompt (written just after its last message)."""
        body = await eventually_async(lambda: self.comfyui_json(f"/history/{prompt_id}"), what="history")
        return body[prompt_id]

    def prompt_id(self, workflow_id: str) -> str:
        queued = self.scheduler.events(workflow_id, "queued")
        assert queued, f"{workflow_id} was never queued"
        return str(queued[0].prompt_id)


MakeHarness = Callable[..., Awaitable[Harness]]


@contextlib.asynccontextmanager
async def running_session(session: RunnerSession, server: GrpcServer) -> AsyncIterator[None]:
    """Runs `session` for the block; then stops it (1 s to end its stream, else its task is
    cancelled), closes its channel and stops `server`, its scheduler."""
    task = asyncio.create_task(session.run())
    try:
        yield
    finally:
        await session.stop(1.0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await session.close()
        await server.stop()


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[MakeHarness]:
    made: list[Harness] = []

    async def make(*, node_delay_ms: float = 0, slots: int = 1, in_process: bool = True, comfyui_up: bool = True,
                   **overrides: Any) -> Harness:
        scheduler = FakeScheduler(heartbeat_s=0.2, lease_s=5.0)
        scheduler_server = GrpcServer(lambda s: pb_grpc.add_RunnerSessionServiceServicer_to_server(scheduler, s))
        await scheduler_server.start()
        storage = MemoryStorage()
        storage_server = GrpcServer(lambda s: storage_service_pb2_grpc.add_StorageServiceServicer_to_server(storage, s))
        await storage_server.start()
        root = tmp_path / "comfyui"
        os.makedirs(root, exist_ok=True)
        comfyui = ComfyUIDouble(root, node_delay_ms=node_delay_ms)
        await comfyui.start()
        settings = RunnerSettings(
            scheduler=scheduler_server.address,
            storage=storage_server.address,
            comfyui_url=comfyui.url,
            tags=("test",),
            slots=slots,
            name="runner-under-test",
            token="runner-token",
            drain_timeout_s=2.0,
            scheduler_backoff=Backoff(base_s=0.05, cap_s=0.3),
            comfyui_backoff=Backoff(base_s=0.05, cap_s=0.3),
            poll_interval_s=3.0,
            **overrides,
        )
        if not comfyui_up:
            await comfyui.stop()
        runner = await start_runner(settings) if in_process else None
        h = Harness(root, scheduler, scheduler_server, storage, storage_server, comfyui, runner, node_delay_ms)
        made.append(h)
        if in_process and comfyui_up:
            await eventually(lambda: scheduler.connected, what="the runner's session")
        return h

    yield make
    for h in made:
        if h.runner is not None:
            await h.runner.shutdown()
        await h.comfyui.stop()
        await h.scheduler_server.stop()
        await h.storage_server.stop()
