"""End-to-end cost of the suite: one trivial workflow direct on ComfyUI vs through the suite.

The workflow is EmptyImage -> ImageInvert -> SaveImage (8x8). Direct: POST /prompt to a
ComfyUI double and wait on its websocket (one socket, kept open, as a ComfyUI client does)
for `execution_success` of that prompt. Through the suite: POST /v1/workflow, then
GET /subscribe (Last-Event-ID: 0) until the terminal status frame; a runner drives a second
double of the same process. The two paths alternate, one workflow at a time; the graph's
colour changes every run so ComfyUI's cache never short-cuts either path.

Target: the suite adds at most 10 ms at the median and 50 ms at p99. Next to it, the floor
measured in the same run (bench/_floors.py): the wall time of the hops the suite must add to
a run at the least (the create's request and call and commit, the assignment, GET /view, the
output's put and its two fsyncs, `completed`, its commit, the watch message).

`--trace` (or BENCH_TRACE=1) also times the stages of the suite runs (bench._trace wraps the
services' functions in every process) and adds `stages_ms` to the result: each milestone of
the critical path (create, assignment, POST /prompt, execution_success, output stored,
completed, terminal frame) with its median time since the create was sent and the median
step from the milestone before. Tracing costs a little itself (a few ms per run), so the
latency figures of a traced run are not the benchmark's.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

from bench import _trace
from bench._common import INVERT, CpuMeter, Fleet, create_body, env_flag, figure, log, summary_ms
from bench._floors import measure as measure_floors
from bench._profile import profiled

TERMINAL = {"completed", "failed", "cancelled", "invalid"}


def graph(color: int, batch: int = 1) -> dict[str, Any]:
    """The trivial workflow; `batch` images (one output file each)."""
    g = json.loads(json.dumps(INVERT))
    g["1"]["inputs"]["color"] = color
    g["1"]["inputs"]["batch_size"] = batch
    return g


async def direct(session: aiohttp.ClientSession, base: str, ws: aiohttp.ClientWebSocketResponse, client_id: str,
                 color: int, batch: int = 1) -> float:
    start = time.perf_counter()
    async with session.post(f"{base}/prompt", json={"prompt": graph(color, batch), "client_id": client_id}) as reply:
        body = await reply.json()
        assert reply.status == 200, body
    prompt_id = body["prompt_id"]
    while True:
        message = await ws.receive(timeout=30)
        if message.type != aiohttp.WSMsgType.TEXT:
            continue
        data = json.loads(message.data)
        if data.get("type") in ("execution_success", "execution_error") and data["data"].get("prompt_id") == prompt_id:
            assert data["type"] == "execution_success", data
            return time.perf_counter() - start


async def through_suite(session: aiohttp.ClientSession, base: str, token: str, color: int, batch: int = 1) -> float:
    body, content_type = create_body(graph(color, batch), text=False)
    auth = {"Authorization": f"Bearer {token}"}
    start = time.perf_counter()
    async with session.post(f"{base}/v1/workflow", data=body,
                            headers={**auth, "Content-Type": content_type}) as reply:
        created = await reply.json()
        assert reply.status == 201, created
    async with session.get(f"{base}/v1/workflow/{created['id']}/subscribe",
                           headers={**auth, "Last-Event-ID": "0"}) as stream:
        assert stream.status == 200
        event = ""
        async for raw in stream.content:
            line = raw.decode().rstrip("\r\n")
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:") and event == "status":
                status = json.loads(line[5:])["status"]
                if status in TERMINAL:
                    assert status == "completed", line
                    return time.perf_counter() - start
    raise RuntimeError("the event stream ended before a terminal status")


async def measure(fleet: Fleet, runs: int, warmup: int,
                  windows: list[tuple[float, float]] | None = None) -> tuple[list[float], list[float]]:
    suite_base = fleet.url
    direct_base = f"http://127.0.0.1:{fleet.double_ports[1]}"
    client_id = uuid.uuid4().hex
    direct_s: list[float] = []
    suite_s: list[float] = []
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as session, \
            session.ws_connect(f"{direct_base.replace('http', 'ws')}/ws?clientId={client_id}") as ws:
        for i in range(warmup + runs):
            color = 1000 + i
            d = await direct(session, direct_base, ws, client_id, color)
            began = time.time()
            s = await through_suite(session, suite_base, fleet.token, color)
            if i >= warmup and windows is not None:
                windows.append((began, began + s))
            if i >= warmup:
                direct_s.append(d)
                suite_s.append(s)
    return direct_s, suite_s


def stages(trace_dir: Path, windows: list[tuple[float, float]]) -> list[dict[str, Any]]:
    """The traced runs' critical path: each milestone's median time and step (bench._trace)."""
    return _trace.breakdown(_trace.load(trace_dir), windows)


def main(quick: bool, trace: bool = False) -> dict[str, Any]:
    runs, warmup = (20, 2) if quick else (150, 5)
    trace = trace or env_flag("BENCH_TRACE")
    trace_dir = Path(tempfile.mkdtemp(prefix="comfyfleet-trace-")) if trace else None
    env = _trace.environment(trace_dir) if trace_dir is not None else {}
    windows: list[tuple[float, float]] = []
    extra: dict[str, Any] = {}
    floors = measure_floors(quick)
    try:
        # The suite and the runner are traced (the doubles, not ours, are not).
        with Fleet(doubles=2, runners=1, extra_env=env) as fleet:
            log(f"overhead: {runs} runs each way, alternating{' (traced)' if trace else ''}")
            pids = {name: fleet.pid(name) for name in ("gateway", "scheduler", "storage", "runner-0", "doubles")}
            meter = CpuMeter(pids)
            with profiled(pids, "overhead"):
                meter.start()
                direct_s, suite_s = asyncio.run(measure(fleet, runs, warmup, windows))
                cpu = meter.stop()
        if trace_dir is not None:
            extra["stages_ms"] = stages(trace_dir, windows)
    finally:
        if trace_dir is not None:
            shutil.rmtree(trace_dir, ignore_errors=True)
    d, s = summary_ms(direct_s), summary_ms(suite_s)
    added = [(b - a) * 1000 for a, b in zip(direct_s, suite_s, strict=True)]
    add_median = s["median"] - d["median"]
    add_p99 = s["p99"] - d["p99"]
    return {
        "figures": [
            figure("suite latency median", s["median"], "ms", baseline=d["median"],
                   note=f"direct min {d['min']} max {d['max']}; suite min {s['min']} max {s['max']}"),
            figure("suite latency p99", s["p99"], "ms", baseline=d["p99"]),
            figure("added at median", add_median, "ms", target="<= +10 ms", met=add_median <= 10),
            figure("added at p99", add_p99, "ms", target="<= +50 ms", met=add_p99 <= 50),
            figure("added at median vs its floor", add_median, "ms", baseline=floors.added_latency_ms(),
                   note="floor: the wall time of the hops the suite must add (bench/_floors.py)"),
        ],
        "direct_ms": d,
        "suite_ms": s,
        "paired_added_ms": {"median": round(statistics.median(added), 2)},
        "runs": runs,
        # CPU per run (both paths; the doubles serve both): how much of the added time is work.
        "cpu_ms_per_run": {k: round(1000 * v / (runs + warmup), 2) for k, v in cpu.items()},
        "floors": floors.as_dict(),
        **extra,
    }


if __name__ == "__main__":
    print(json.dumps(main("--quick" in sys.argv, trace="--trace" in sys.argv), indent=2))
