"""The floor under the suite: what the libraries it stands on cost per operation on this
machine, and the least CPU one workflow can cost given the operations it must make.

    floors = measure(quick)          unit costs, measured now (the machine is noisy)
    floors.per_workflow_ms()         least CPU per workflow: count x unit cost, summed
    floors.added_latency_ms()        least wall time the suite adds to one run over ComfyUI's

Each unit is the bare library doing one operation with nothing of comfyfleet around it, the
peer in a subprocess of its own (CPU read from /proc), the caller in this process:

    grpc_unary     a grpc.aio unary call, 200 bytes each way              both sides
    grpc_message   one message on an open grpc.aio bidi stream            both sides
    http_request   an aiohttp GET answered with 4 KiB by aiohttp          client / server
    ws_message     a ~200-byte text frame, aiohttp server -> aiohttp ws   client / server
    sqlite_change  UPDATE + INSERT in WAL mode, synchronous=NORMAL, committed
                   eight at a time (the scheduler's group commit)         one side
    sqlite_commit  the same change committed alone (wall, median)         one side
    file_put       4 KiB written, fsynced, renamed, directory fsynced     one side

What one workflow must do at the least in this design (COUNTS, a lower bound: no retries,
no heartbeats, no watchers, no inputs): its assignment down the runner's session and two
event messages up (`running`; `output_stored` with `completed`), one unary put of its one
output, POST /prompt and GET /view to ComfyUI, the websocket frames ComfyUI sends for the
prompt (counted on a double, so the count is ComfyUI's protocol as recorded, not a guess),
three row changes (queued, running, completed) and one durable file. The ComfyUI side of the
HTTP and websocket work is the double's and is measured with it, so `ours` counts only the
client side there.

What the suite must add to one run's latency at the least (LATENCY_COUNTS, wall time, on the
critical path of bench/overhead.py): the create request to the gateway and its unary call to
the scheduler, the create's commit, the assignment down, GET /view, the output's unary put and
its durable file (two fsyncs: the bytes, then the rename), `completed` up, its commit, and the
watch message to the gateway.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc
from aiohttp import web

from bench._common import INVERT, cpu_seconds

PAYLOAD = b"x" * 200
BODY = b"y" * 4096
FRAME = json.dumps({"type": "executing", "data": {"node": "2", "display_node": "2",
                                                   "prompt_id": "7c0e8a52-0b44-4f0e-9d55-6b5ba2b07a4e"}})
GROUP = 8  # changes per commit in sqlite_change

# Operations per workflow, lower bound (module docstring); ws_message is counted on a double.
COUNTS = {"grpc_message": 3, "grpc_unary": 1, "http_request": 2, "sqlite_change": 3, "file_put": 1}
LATENCY_COUNTS = {"http_request": 2, "grpc_unary": 2, "sqlite_commit": 2, "grpc_message": 3, "file_put": 1}


@dataclass
class Unit:
    """CPU microseconds per operation: ours (the caller), the peer's, and the wall time."""

    ours_us: float
    peer_us: float = 0.0
    wall_us: float = 0.0

    def both_us(self) -> float:
        return self.ours_us + self.peer_us


@dataclass
class Floors:
    units: dict[str, Unit] = field(default_factory=dict)
    ws_messages: int = 0  # frames ComfyUI sends for the benchmark's prompt

    def counts(self) -> dict[str, int]:
        return {**COUNTS, "ws_message": self.ws_messages}

    def per_workflow_ms(self) -> float:
        """Least CPU of the suite's own processes per workflow (ComfyUI's side excluded)."""
        total = 0.0
        for name, count in self.counts().items():
            unit = self.units[name]
            # gRPC has comfyfleet on both ends; HTTP and websockets have ComfyUI on the far end.
            total += count * (unit.both_us() if name.startswith("grpc") else unit.ours_us)
        return total / 1000

    def added_latency_ms(self) -> float:
        """Least wall time the suite adds to one run (LATENCY_COUNTS)."""
        return sum(count * self.units[name].wall_us for name, count in LATENCY_COUNTS.items()) / 1000

    def as_dict(self) -> dict[str, Any]:
        return {"units_us": {name: {"ours": round(u.ours_us, 1), "peer": round(u.peer_us, 1),
                                    "wall": round(u.wall_us, 1)} for name, u in self.units.items()},
                "counts": self.counts(), "per_workflow_ms": round(self.per_workflow_ms(), 3),
                "latency_counts": LATENCY_COUNTS, "added_latency_ms": round(self.added_latency_ms(), 2)}


# -- the peer: gRPC and HTTP servers in a process of their own --------------------------------


def _grpc_handlers() -> grpc.GenericRpcHandler:
    async def unary(request: bytes, _context: Any) -> bytes:
        return PAYLOAD

    async def echo(requests: Any, _context: Any) -> Any:
        async for request in requests:
            yield request

    return grpc.method_handlers_generic_handler("floors.Peer", {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Echo": grpc.stream_stream_rpc_method_handler(echo),
    })


async def _serve() -> None:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((_grpc_handlers(),))
    grpc_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()

    async def view(_request: web.Request) -> web.Response:
        return web.Response(body=BODY, content_type="image/png")

    async def frames(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        count = int(request.query["n"])
        for _ in range(count):
            await ws.send_str(FRAME)
        await ws.receive()  # the client closes once it has them all
        return ws

    app = web.Application()
    app.add_routes([web.get("/view", view), web.get("/ws", frames)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    http_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(json.dumps({"grpc": grpc_port, "http": http_port}), flush=True)
    await asyncio.Event().wait()


# -- the caller ---------------------------------------------------------------------------


async def _timed(peer_pid: int, count: int, run: Any) -> Unit:
    """Best of three rounds of `run()` (which does `count` operations): per operation."""
    best: Unit | None = None
    for _ in range(3):
        ours, peer, wall = time.process_time(), cpu_seconds(peer_pid), time.perf_counter()
        await run()
        unit = Unit((time.process_time() - ours) * 1e6 / count, (cpu_seconds(peer_pid) - peer) * 1e6 / count,
                    (time.perf_counter() - wall) * 1e6 / count)
        if best is None or unit.both_us() < best.both_us():
            best = unit
    assert best is not None
    return best


async def _network_units(ports: dict[str, int], peer_pid: int, count: int) -> dict[str, Unit]:
    units: dict[str, Unit] = {}
    async with grpc.aio.insecure_channel(f"127.0.0.1:{ports['grpc']}") as channel:
        unary = channel.unary_unary("/floors.Peer/Unary")
        echo = channel.stream_stream("/floors.Peer/Echo")
        for _ in range(100):
            await unary(PAYLOAD)

        async def unary_calls() -> None:
            for _ in range(count):
                await unary(PAYLOAD)

        async def stream_messages() -> None:
            call = echo()
            for _ in range(count // 2):  # a message each way per round: count messages
                await call.write(PAYLOAD)
                await call.read()
            await call.done_writing()

        units["grpc_unary"] = await _timed(peer_pid, count, unary_calls)
        units["grpc_message"] = await _timed(peer_pid, count // 2 * 2, stream_messages)

    base = f"http://127.0.0.1:{ports['http']}"
    async with aiohttp.ClientSession() as session:
        async def requests() -> None:
            for _ in range(count):
                async with session.get(f"{base}/view") as reply:
                    await reply.read()

        async def frames() -> None:
            async with session.ws_connect(f"{base}/ws?n={count}") as ws:
                for _ in range(count):
                    message = await ws.receive()
                    json.loads(message.data)  # the runner parses every frame

        await requests()
        units["http_request"] = await _timed(peer_pid, count, requests)
        units["ws_message"] = await _timed(peer_pid, count, frames)
    return units


def _sqlite_units(directory: Path, count: int) -> tuple[Unit, Unit]:
    """A change in a group commit (CPU), and a lone change's commit (wall)."""
    db = sqlite3.connect(directory / "floor.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("CREATE TABLE workflows (id TEXT PRIMARY KEY, status TEXT, updated_at TEXT)")
    db.execute("CREATE TABLE events (workflow_id TEXT, seq INTEGER, type TEXT, data TEXT, "
               "PRIMARY KEY (workflow_id, seq))")
    db.executemany("INSERT INTO workflows VALUES (?, 'accepted', '')", ((f"wf-{i}",) for i in range(count)))
    ours, wall = time.process_time(), time.perf_counter()
    for start in range(0, count, GROUP):
        db.execute("BEGIN IMMEDIATE")
        for i in range(start, min(start + GROUP, count)):
            db.execute("UPDATE workflows SET status = 'running', updated_at = ? WHERE id = ?", ("t", f"wf-{i}"))
            db.execute("INSERT INTO events VALUES (?, 1, 'running', '{}')", (f"wf-{i}",))
        db.execute("COMMIT")
    change = Unit((time.process_time() - ours) * 1e6 / count, wall_us=(time.perf_counter() - wall) * 1e6 / count)
    walls = []
    for i in range(count // 4):  # a lone change committed on its own: what a caller waits for
        began = time.perf_counter()
        db.execute("BEGIN IMMEDIATE")
        db.execute("UPDATE workflows SET status = 'completed', updated_at = ? WHERE id = ?", ("t", f"wf-{i}"))
        db.execute("INSERT INTO events VALUES (?, 2, 'completed', '{}')", (f"wf-{i}",))
        db.execute("COMMIT")
        walls.append(time.perf_counter() - began)
    db.close()
    return change, Unit(0.0, wall_us=statistics.median(walls) * 1e6)


def _file_put(directory: Path, count: int) -> Unit:
    """CPU per durable 4 KiB put, and its median wall time (fsync waits on the disk)."""
    data = directory / "data"
    data.mkdir()
    walls = []
    ours = time.process_time()
    for i in range(count):
        began = time.perf_counter()
        fd, temp = tempfile.mkstemp(dir=directory)
        with os.fdopen(fd, "wb") as file:
            file.write(BODY)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, data / f"object-{i}")
        dir_fd = os.open(data, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        walls.append(time.perf_counter() - began)
    return Unit((time.process_time() - ours) * 1e6 / count, wall_us=statistics.median(walls) * 1e6)


async def _ws_frames_per_prompt() -> int:
    """Frames a ComfyUI double sends on the websocket for the benchmark's prompt, to its end."""
    from tests.comfyui_double import ComfyUIDouble  # the recorded protocol's stand-in

    with tempfile.TemporaryDirectory(prefix="floors-comfyui-") as root:
        double = ComfyUIDouble(root, port=0)
        port = await double.start()
        try:
            async with aiohttp.ClientSession() as session, \
                    session.ws_connect(f"http://127.0.0.1:{port}/ws?clientId=floors") as ws:
                await ws.receive()  # the status frame every new connection gets first
                async with session.post(f"http://127.0.0.1:{port}/prompt",
                                        json={"prompt": INVERT, "client_id": "floors"}) as reply:
                    prompt_id = (await reply.json())["prompt_id"]
                frames = 0
                while True:
                    message = await ws.receive(timeout=30)
                    if message.type != aiohttp.WSMsgType.TEXT:
                        continue
                    frames += 1
                    data = json.loads(message.data)
                    if data["type"] in ("execution_success", "execution_error") \
                            and data["data"].get("prompt_id") == prompt_id:
                        return frames
        finally:
            await double.stop()


def measure(quick: bool) -> Floors:
    """Every unit cost, now, on this machine (a few seconds). Quick: fewer operations, and
    measured once per process (`make bench QUICK=1` runs in under a minute)."""
    return _measure_once_quick() if quick else _measure(4000)


@functools.cache
def _measure_once_quick() -> Floors:
    return _measure(250)


def _measure(count: int) -> Floors:
    peer = subprocess.Popen([sys.executable, "-m", "bench._floors", "serve"], stdout=subprocess.PIPE)
    try:
        assert peer.stdout is not None
        ports = json.loads(peer.stdout.readline())
        floors = Floors(units=asyncio.run(_network_units(ports, peer.pid, count)))
    finally:
        peer.kill()
        peer.wait()
    with tempfile.TemporaryDirectory(prefix="floors-", dir=os.environ.get("BENCH_TMP")) as directory:
        floors.units["sqlite_change"], floors.units["sqlite_commit"] = _sqlite_units(Path(directory), count)
        floors.units["file_put"] = _file_put(Path(directory), count // 4)
    floors.ws_messages = asyncio.run(_ws_frames_per_prompt())
    return floors


if __name__ == "__main__":
    if sys.argv[1:] == ["serve"]:
        asyncio.run(_serve())
    else:
        print(json.dumps(measure("--quick" in sys.argv).as_dict(), indent=2))
