"""SSE fan-out: N subscribers on one gateway process (`python -m bench.run --only sse_fanout`).

For each N (1,000, 5,000, 10,000; 500 and 2,000 with --quick): a fresh gateway process in
front of a scheduler double (bench/_sse_scheduler.py: 10 running workflows, 1 event a second
each, staggered across the second, each carrying its publish time), and N raw HTTP/1.1
subscribers in this process spread evenly over the workflows, so each subscriber gets
1 event/s. After all N are connected, for a measuring window:

- delivery latency from publish (in the double) to the frame's data line read here, p50/p99;
- gateway RSS per subscriber: (RSS with N connected - RSS before any) / N;
- events/s delivered to all subscribers together.

Targets (issue 7): 10,000 subscribers at <= 16 KiB RSS each; p99 < 100 ms with 5,000
subscribers at 1 event/s. Latency here includes this client's own scheduling on a shared
2-core machine, so it is an upper bound of the gateway's.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._common import cpu_seconds, figure, log, percentile
from bench._profile import profiled
from services.devrun import ROOT, free_port, http_ready

WORKFLOWS = 10
RATE = 1.0  # events per second per workflow (= per subscriber)
CONNECT_BATCH = 250


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


class Subscribers:
    """N raw SSE subscribers: connect, read lines, record each event's delivery latency."""

    def __init__(self, port: int, workflows: list[str]) -> None:
        self.port = port
        self.workflows = workflows
        self.latencies: list[float] = []
        self.frames = 0
        self.measuring = False
        self.connected = 0
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self, count: int) -> None:
        for first in range(0, count, CONNECT_BATCH):
            opened = [asyncio.Event() for _ in range(first, min(count, first + CONNECT_BATCH))]
            for n, event in enumerate(opened, start=first):
                self.tasks.append(asyncio.create_task(self._one(self.workflows[n % len(self.workflows)], event)))
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in opened)), 60)
            self.connected += len(opened)

    async def _one(self, workflow_id: str, opened: asyncio.Event) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write((f"GET /v1/workflow/{workflow_id}/subscribe HTTP/1.1\r\nHost: bench\r\n"
                      "Authorization: Bearer bench\r\n\r\n").encode())
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        opened.set()
        try:
            while line := await reader.readline():
                if line.startswith(b"data: ") and b'"message"' in line:
                    sent = float(json.loads(line[6:])["message"])
                    if self.measuring:
                        self.latencies.append(time.time() - sent)
                        self.frames += 1
        finally:
            writer.close()

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def spawn(args: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "ab") as out:
        return subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=out, start_new_session=True)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


async def measure(count: int, window_s: float, var: Path) -> dict[str, Any]:
    from bench._sse_scheduler import workflow_ids

    scheduler_port, gateway_port = free_port(), free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "GATEWAY_HOST": "127.0.0.1", "GATEWAY_PORT": str(gateway_port),
           "GATEWAY_SCHEDULER": f"127.0.0.1:{scheduler_port}", "GATEWAY_STORAGE": f"127.0.0.1:{free_port()}",
           "GATEWAY_RATE_LIMIT_REQUESTS": "0"}
    double = spawn([sys.executable, "-m", "bench._sse_scheduler", "--port", str(scheduler_port),
                    "--workflows", str(WORKFLOWS), "--rate", str(RATE)], env, var / "sse-scheduler.log")
    gateway = spawn([sys.executable, "-m", "services.gateway"], env, var / f"sse-gateway-{count}.log")
    subscribers = Subscribers(gateway_port, workflow_ids(WORKFLOWS))
    try:
        deadline = time.monotonic() + 30
        while not http_ready(f"http://127.0.0.1:{gateway_port}/healthz"):
            if time.monotonic() > deadline or gateway.poll() is not None:
                raise RuntimeError(f"gateway did not start; see {var}")
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
        rss_before = rss_kib(gateway.pid)
        started = time.monotonic()
        await subscribers.start(count)
        connect_s = time.monotonic() - started
        await asyncio.sleep(2.0)  # every subscriber past its snapshot, the feeds running
        rss_after = rss_kib(gateway.pid)
        cpu = {"gateway": cpu_seconds(gateway.pid), "scheduler double": cpu_seconds(double.pid),
               "subscribers": cpu_seconds(os.getpid())}
        subscribers.measuring = True
        began = time.monotonic()
        with profiled({"gateway": gateway.pid}, f"sse_fanout-{count}"):
            await asyncio.sleep(window_s)
        subscribers.measuring = False
        elapsed = time.monotonic() - began
        cpu = {"gateway": cpu_seconds(gateway.pid) - cpu["gateway"],
               "scheduler double": cpu_seconds(double.pid) - cpu["scheduler double"],
               "subscribers": cpu_seconds(os.getpid()) - cpu["subscribers"]}
        samples = subscribers.latencies
        result = {
            "subscribers": count,
            "connect_s": round(connect_s, 2),
            "rss_before_kib": rss_before,
            "rss_after_kib": rss_after,
            "rss_per_subscriber_kib": round((rss_after - rss_before) / count, 2),
            "latency_p50_ms": round(percentile(samples, 50) * 1000, 2),
            "latency_p99_ms": round(percentile(samples, 99) * 1000, 2),
            "latency_max_ms": round(max(samples) * 1000, 2) if samples else None,
            "events_per_s": round(subscribers.frames / elapsed, 1),
            "expected_events_per_s": count * RATE,
            "cpu_share": {name: round(used / elapsed, 2) for name, used in cpu.items()},
            "load_average_1m": round(os.getloadavg()[0], 2),  # the machine is shared: context for the above
        }
        log(f"sse_fanout {count}: {result}")
        return result
    finally:
        await subscribers.stop()
        stop(gateway)
        stop(double)


def main(quick: bool) -> dict[str, Any]:
    counts = [500, 2000] if quick else [1000, 5000, 10000]
    window_s = 5.0 if quick else 10.0
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="sse-fanout-") as tmp:
        for count in counts:
            runs.append(asyncio.run(measure(count, window_s, Path(tmp))))
    figures = []
    for run in runs:
        n = run["subscribers"]
        figures.append(figure(f"p99 delivery, {n} subscribers at 1 event/s", run["latency_p99_ms"], "ms",
                              target="< 100 ms at 5,000" if n == 5000 else None,
                              met=run["latency_p99_ms"] < 100 if n == 5000 else None,
                              note=f"p50 {run['latency_p50_ms']} ms"))
        figures.append(figure(f"gateway RSS per subscriber, {n} subscribers", run["rss_per_subscriber_kib"], "KiB",
                              target="<= 16 KiB at 10,000" if n == 10000 else None,
                              met=run["rss_per_subscriber_kib"] <= 16 if n == 10000 else None))
        figures.append(figure(f"events/s delivered, {n} subscribers", run["events_per_s"], "/s",
                              baseline=run["expected_events_per_s"]))
    return {"figures": figures, "runs": runs, "workflows": WORKFLOWS, "rate_per_workflow": RATE}


if __name__ == "__main__":
    print(json.dumps(main("--quick" in sys.argv), indent=2))
