"""Pool mode: runners registered through the public API, driven by `services.runner.pool`.

The stack is real and in this process: the gateway (uvicorn, port 0) in front of the
scheduler (`SchedulerApp`) and the storage service (local backend), the pool with the
bootstrap's pool token, and the ComfyUI double behind `HeaderGate`, a small proxy that
answers 401 to any request (HTTP or websocket) without the registered header, like an
authenticating reverse proxy in front of a rented ComfyUI.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import httpx
import pytest
import uvicorn
from aiohttp import web
from comfyfleet.runner.v1 import pool_runner_pb2, runner_pool_service_pb2, runner_pool_service_pb2_grpc
from comfyfleet.runner.v1 import runner_session_service_pb2 as session_pb2
from comfyfleet.runner.v1 import runner_session_service_pb2_grpc as session_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.common.grpc_server import SERVER_OPTIONS
from services.gateway.app import create_app
from services.gateway.config import GatewaySettings
from services.runner.config import Backoff, RunnerSettings
from services.runner.pool import Registration, RunnerPool, RunningPool, start_pool
from services.runner.server import start_runner
from services.scheduler.config import Settings
from services.scheduler.server import SchedulerApp
from services.storage.local_backend import LocalBackend
from services.storage.server import register as register_storage
from services.storage.servicer import StorageServicer
from tests.comfyui_double.app import ComfyUIDouble
from tests.runner.conftest import chain
from tests.runner.fakes import eventually, eventually_async

KEY = "X-Comfy-Key"


@dataclass
class HeaderGate:
    """A proxy to `upstream` that requires `KEY: value` on every request; records what it saw."""

    upstream: str
    value: str
    seen: list[str] = field(default_factory=list)  # paths let through, "/ws" included
    refused: list[str] = field(default_factory=list)
    open_websockets: int = 0
    _runner: web.AppRunner | None = None
    url: str = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        self._client = aiohttp.ClientSession()

    async def stop(self) -> None:
        await self._client.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get(KEY) != self.value:
            self.refused.append(request.path)
            return web.Response(status=401, text="missing or wrong key")
        self.seen.append(request.path)
        if request.path == "/ws":
            return await self._websocket(request)
        async with self._client.request(request.method, self.upstream + request.path_qs, data=await request.read(),
                                        headers={"Content-Type": request.headers.get("Content-Type", "")}) as resp:
            body = await resp.read()
            return web.Response(status=resp.status, body=body, headers={"Content-Type": resp.content_type})

    async def _websocket(self, request: web.Request) -> web.WebSocketResponse:
        down = web.WebSocketResponse()
        await down.prepare(request)
        self.open_websockets += 1
        try:
            async with self._client.ws_connect(self.upstream + request.path_qs) as up:
                async def pump_up() -> None:
                    async for frame in down:
                        if frame.type == aiohttp.WSMsgType.TEXT:
                            await up.send_str(frame.data)

                async def pump_down() -> None:
                    async for frame in up:
                        if frame.type == aiohttp.WSMsgType.TEXT:
                            await down.send_str(frame.data)
                        elif frame.type == aiohttp.WSMsgType.BINARY:
                            await down.send_bytes(frame.data)

                pumps = [asyncio.create_task(pump_up()), asyncio.create_task(pump_down())]
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)  # either side closed
                for pump in pumps:
                    pump.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
        finally:
            self.open_websockets -= 1
            await down.close()
        return down


@dataclass
class Stack:
    client: httpx.AsyncClient
    scheduler: SchedulerApp
    scheduler_address: str
    pool: RunningPool
    pool_token: str
    runner_token: str


async def _grpc_server(register: Any) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server(options=SERVER_OPTIONS)
    register(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    return server, port


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    base_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    backend = await LocalBackend.open(tmp_path / "objects")
    storage = StorageServicer(backend, signing_key=b"k" * 32, public_url=base_url, default_ttl_seconds=300)
    storage_server, storage_port = await _grpc_server(lambda s: register_storage(s, storage))
    settings = Settings(listen="127.0.0.1:0", database_url=f"sqlite+aiosqlite:///{tmp_path}/s.db",
                        storage_address=f"127.0.0.1:{storage_port}", lease_seconds=2.0, heartbeat_seconds=0.2,
                        bootstrap_dir=str(tmp_path))
    scheduler = await SchedulerApp.start(settings)
    scheduler_server, scheduler_port = await _grpc_server(scheduler.register)
    gateway = uvicorn.Server(uvicorn.Config(
        create_app(GatewaySettings(port=0, rate_limit_requests=0, scheduler_address=f"127.0.0.1:{scheduler_port}",
                                   storage_address=f"127.0.0.1:{storage_port}")),
        lifespan="on", ws="none", log_level="warning", access_log=False, timeout_graceful_shutdown=1))
    serving = asyncio.create_task(gateway.serve(sockets=[sock]))
    await eventually(lambda: gateway.started or serving.done(), what="the gateway")
    pool_token = (tmp_path / "pool-token").read_text().strip()
    pool = await start_pool(RunnerSettings(
        scheduler=f"127.0.0.1:{scheduler_port}", storage=f"127.0.0.1:{storage_port}", token=pool_token,
        pool=True, drain_timeout_s=1.0, scheduler_backoff=Backoff(base_s=0.05, cap_s=0.3),
        comfyui_backoff=Backoff(base_s=0.05, cap_s=0.3), poll_interval_s=3.0), start_runner)
    dev_token = (tmp_path / "dev-token").read_text().strip()
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=10,
                                     headers={"Authorization": f"Bearer {dev_token}"}) as client:
            yield Stack(client, scheduler, f"127.0.0.1:{scheduler_port}", pool, pool_token,
                        (tmp_path / "runner-token").read_text().strip())
    finally:
        await pool.shutdown()
        gateway.should_exit = True
        await serving
        sock.close()
        await scheduler.sessions.close()
        await scheduler_server.stop(1)
        await scheduler.stop()
        await storage_server.stop(None)
        await backend.close()


@pytest.fixture
async def double(tmp_path: Path) -> AsyncIterator[ComfyUIDouble]:
    comfyui = ComfyUIDouble(tmp_path / "comfyui")
    await comfyui.start()
    yield comfyui
    await comfyui.stop()


@pytest.fixture
async def gates(double: ComfyUIDouble) -> AsyncIterator[tuple[HeaderGate, HeaderGate]]:
    first, second = HeaderGate(double.url, "alpha"), HeaderGate(double.url, "beta")
    await first.start()
    await second.start()
    yield first, second
    await first.stop()
    await second.stop()


async def submit(client: httpx.AsyncClient, prefix: str) -> str:
    files = {"workflow_json": ("w.json", json.dumps(chain(3, prefix)), "application/json")}
    created = await client.post("/v1/workflow", data={"name": prefix, "tags": "pool"}, files=files)
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


async def status(client: httpx.AsyncClient, workflow_id: str) -> str:
    reply = await client.get(f"/v1/workflow/{workflow_id}")
    assert reply.status_code == 200, reply.text
    return str(reply.json()["status"])


async def finished(client: httpx.AsyncClient, workflow_id: str) -> str:
    async def ended() -> str | None:
        now = await status(client, workflow_id)
        return now if now in ("completed", "failed", "cancelled", "invalid") else None

    result: str = await eventually_async(ended, timeout_s=15.0, what=f"{workflow_id} to end")
    return result


async def connection(client: httpx.AsyncClient, runner_id: str) -> str:
    return str((await client.get(f"/v1/runner/{runner_id}")).json()["connection"])


@pytest.mark.timeout(60)
async def test_pool_follows_a_registered_runner_from_create_to_delete(
    stack: Stack, gates: tuple[HeaderGate, HeaderGate]
) -> None:
    alpha, beta = gates
    created = await stack.client.post("/v1/runner", json={
        "name": "rented-gpu", "endpoint": alpha.url, "headers": {KEY: "alpha"}, "tags": ["pool"]})
    assert created.status_code in (200, 201), created.text
    runner = created.json()
    assert runner["headers"] == {KEY: "****"}, "the API never shows a header value"
    runner_id = runner["id"]

    # create: the pool opens a session for it, bound to the registration
    async def online() -> bool:
        return await connection(stack.client, runner_id) == "online"

    await eventually_async(online, timeout_s=10.0, what="the pool's session")
    assert [r["id"] for r in (await stack.client.get("/v1/runner")).json()["runners"]] == [runner_id], \
        "the pool's session is the registered runner, not a new one by name"

    # a workflow runs on it, and every request to its ComfyUI carried the header
    first = await submit(stack.client, "pool_first")
    assert await finished(stack.client, first) == "completed"
    assert {"/prompt", "/ws", "/view", "/object_info"} <= set(alpha.seen), alpha.seen
    assert alpha.refused == []
    assert (await stack.client.get(f"/v1/workflow/{first}")).json()["output_count"] == 1

    # update endpoint and headers: the pool restarts its agent against the new ComfyUI
    updated = await stack.client.put(f"/v1/runner/{runner_id}", json={"endpoint": beta.url, "headers": {KEY: "beta"}})
    assert updated.status_code == 200, updated.text
    await eventually(lambda: beta.open_websockets == 1 and alpha.open_websockets == 0, timeout_s=10.0,
                     what="the agent to move to the new endpoint")
    await eventually_async(online, timeout_s=10.0, what="the session again")
    second = await submit(stack.client, "pool_second")
    assert await finished(stack.client, second) == "completed"
    assert "/prompt" in beta.seen and beta.refused == []
    assert alpha.seen.count("/prompt") == 1, "nothing more went to the old endpoint"

    # disable: the session stays, nothing new is given to it; enable: work runs on it again
    agent = stack.pool.pool.agents[runner_id][1]
    applied = stack.pool.pool.snapshots_applied
    assert (await stack.client.put(f"/v1/runner/{runner_id}", json={"status": "disabled"})).status_code == 200
    await eventually(lambda: stack.pool.pool.snapshots_applied > applied, what="the pool to see the update")
    files = {"workflow_json": ("w.json", json.dumps(chain(3, "pool_refused")), "application/json")}
    refused = await stack.client.post("/v1/workflow", data={"name": "refused", "tags": "pool"}, files=files)
    assert (refused.status_code, refused.json()["reason"]) == (400, "NO_MATCHING_RUNNER")
    assert await connection(stack.client, runner_id) == "online"
    assert stack.pool.pool.agents[runner_id][1] is agent, "a status change does not restart the agent"
    assert (await stack.client.put(f"/v1/runner/{runner_id}", json={"status": "active"})).status_code == 200
    third = await submit(stack.client, "pool_third")
    assert await finished(stack.client, third) == "completed"
    assert beta.seen.count("/prompt") == 2

    # delete: the pool stops its agent; its ComfyUI websocket closes; the runner is gone
    assert (await stack.client.delete(f"/v1/runner/{runner_id}")).status_code in (200, 204)
    await eventually(lambda: runner_id not in stack.pool.pool.agents, timeout_s=10.0, what="the agent to stop")
    await eventually(lambda: beta.open_websockets == 0, what="its websocket to close")
    assert (await stack.client.get(f"/v1/runner/{runner_id}")).status_code == 404
    assert alpha.refused == [] and beta.refused == []


async def test_only_a_pool_token_watches_the_pool_or_binds_a_session(stack: Stack) -> None:
    created = await stack.client.post("/v1/runner", json={
        "name": "secret-gpu", "endpoint": "http://127.0.0.1:9", "headers": {KEY: "s3cret"}, "tags": ["pool"]})
    runner_id = created.json()["id"]
    async with grpc.aio.insecure_channel(stack.scheduler_address) as channel:
        pool_stub = runner_pool_service_pb2_grpc.RunnerPoolServiceStub(channel)
        for token in (stack.runner_token, "cf_nonsense"):
            call = pool_stub.WatchPool(runner_pool_service_pb2.WatchPoolRequest(),
                                       metadata=(("authorization", f"Bearer {token}"),))
            with pytest.raises(grpc.aio.AioRpcError) as denied:
                await call.read()
            assert denied.value.code() == grpc.StatusCode.UNAUTHENTICATED

        call = pool_stub.WatchPool(runner_pool_service_pb2.WatchPoolRequest(),
                                   metadata=(("authorization", f"Bearer {stack.pool_token}"),))
        snapshot = await asyncio.wait_for(call.read(), 5.0)
        call.cancel()
        assert isinstance(snapshot, runner_pool_service_pb2.WatchPoolResponse)
        assert [(r.id, dict(r.headers)) for r in snapshot.runners] == [(runner_id, {KEY: "s3cret"})], \
            "the pool, and only the pool, gets header values in clear"

        session_stub = session_grpc.RunnerSessionServiceStub(channel)
        for token, bound_to, code in ((stack.runner_token, runner_id, grpc.StatusCode.UNAUTHENTICATED),
                                      (stack.pool_token, "no-such-runner", grpc.StatusCode.NOT_FOUND)):
            stream = session_stub.Connect()
            await stream.write(session_pb2.ConnectRequest(hello=session_pb2.Hello(
                runner_token=token, runner_id=bound_to, name="x", slots=1)))
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stream.read()
            assert refused.value.code() == code

        # a self-registered agent of the same owner and name is another runner, not this one
        stream = session_stub.Connect()
        await stream.write(session_pb2.ConnectRequest(hello=session_pb2.Hello(
            runner_token=stack.runner_token, name="secret-gpu", slots=1)))
        welcome = await asyncio.wait_for(stream.read(), 5.0)
        assert isinstance(welcome, session_pb2.ConnectResponse)
        assert welcome.welcome.runner_id not in ("", runner_id)
        stream.cancel()

        # a stopping scheduler ends the watches, so they do not hold up its drain
        call = pool_stub.WatchPool(runner_pool_service_pb2.WatchPoolRequest(),
                                   metadata=(("authorization", f"Bearer {stack.pool_token}"),))
        assert isinstance(await asyncio.wait_for(call.read(), 5.0), runner_pool_service_pb2.WatchPoolResponse)
        assert stack.scheduler.pool is not None
        await stack.scheduler.drain()
        assert await asyncio.wait_for(call.read(), 5.0) is grpc.aio.EOF


class _Agent:
    def __init__(self, settings: RunnerSettings, log: list[str]) -> None:
        self.settings, self._log = settings, log

    async def shutdown(self, drain_timeout_s: float | None = None) -> None:
        self._log.append(f"stop {self.settings.runner_id} {self.settings.comfyui_url} drain={drain_timeout_s}")


async def test_pool_restarts_an_agent_only_when_what_it_was_started_from_changes() -> None:
    log: list[str] = []

    async def start(settings: RunnerSettings) -> _Agent:
        log.append(f"start {settings.runner_id} {settings.comfyui_url} {dict(settings.comfyui_headers)}")
        return _Agent(settings, log)

    pool = RunnerPool(RunnerSettings(token="pool", pool=True), start)

    def runner(endpoint: str = "http://a", name: str = "a", tags: tuple[str, ...] = ("t",),
               key: str = "1", enabled: bool = True) -> pool_runner_pb2.PoolRunner:
        return pool_runner_pb2.PoolRunner(id="r1", name=name, endpoint=endpoint, headers={KEY: key}, tags=tags,
                                          enabled=enabled)

    steps: list[tuple[list[pool_runner_pb2.PoolRunner], list[str]]] = [
        ([runner()], ["start r1 http://a {'X-Comfy-Key': '1'}"]),
        ([runner()], []),  # the same snapshot again (a resync)
        ([runner(name="renamed", enabled=False)], []),  # the scheduler applies these
        ([runner(key="2")], ["stop r1 http://a drain=None", "start r1 http://a {'X-Comfy-Key': '2'}"]),
        ([runner(key="2", tags=("t", "u"))], ["stop r1 http://a drain=None", "start r1 http://a {'X-Comfy-Key': '2'}"]),
        ([runner(endpoint="http://b/", key="2", tags=("t", "u"))],
         ["stop r1 http://a drain=None", "start r1 http://b {'X-Comfy-Key': '2'}"]),
        ([], ["stop r1 http://b drain=0.0"]),  # deleted: no drain, its session is already closed
    ]
    for snapshot, expected in steps:
        log.clear()
        await pool.apply(snapshot)
        assert log == expected
    started = pool.agent_settings("r9", Registration("http://c", ((KEY, "v"),), ("x",), "n"))
    assert (started.pool, started.runner_id, started.name, started.tags, started.token) == \
        (False, "r9", "n", ("x",), "pool")


async def test_a_stop_under_way_finishes_even_when_the_watch_is_cancelled() -> None:
    stopped = asyncio.Event()

    class SlowAgent:
        async def shutdown(self, drain_timeout_s: float | None = None) -> None:
            await asyncio.sleep(0.2)
            stopped.set()

    async def start(_settings: RunnerSettings) -> SlowAgent:
        return SlowAgent()

    pool = RunnerPool(RunnerSettings(token="pool", pool=True), start)
    await pool.apply([pool_runner_pb2.PoolRunner(id="r1", endpoint="http://a")])
    applying = asyncio.create_task(pool.apply([]))  # r1 deleted: its agent stops
    await asyncio.sleep(0.05)
    applying.cancel()  # the pool is shutting down meanwhile
    await asyncio.gather(applying, return_exceptions=True)
    assert not stopped.is_set() and pool.agents == {}
    await asyncio.wait_for(pool.close(), 2.0)
    assert stopped.is_set(), "close waited for the stop under way"
