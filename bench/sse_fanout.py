"""SSE fan-out: N subscribers on one gateway process (`python -m bench.run --only sse_fanout`).

For each N (1,000, 5,000, 10,000; 1,000 alone with --quick): a fresh gateway process in
front of a scheduler double (bench/_sse_scheduler.py: 10 running workflows, 1 event a second
each, staggered across the second, each carrying its publish time), and N raw HTTP/1.1
subscribers spread evenly over the workflows, so each subscriber gets 1 event/s. The
subscribers live in client processes of their own (bench/_sse_clients.py: one bare
asyncio.Protocol per connection, uvloop when installed, two processes above 5,000) so that
the client, which shares the 2 cores, is not the bottleneck. After all N are connected, for
a measuring window (which starts once the backlog of the connecting phase has drained:
`settle_s`):

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
# Client processes for N subscribers: they share the 2 cores with the gateway, so as few as
# keep the client from being the bottleneck (one bare asyncio.Protocol per connection).
CLIENT_PROCESSES = lambda count: 1 if count <= 5000 else 2  # noqa: E731
# Connecting thousands of subscribers leaves the gateway behind (each subscribe is a
# GetWorkflow call and a snapshot); the window starts once deliveries are this fresh again.
SETTLED_S = 0.5
SETTLE_LIMIT_S = 120.0


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


class Subscribers:
    """N raw SSE subscribers in `processes` client processes (bench/_sse_clients.py), spread
    evenly over the workflows; each records the delivery latency of every event frame."""

    def __init__(self, port: int, workflows: list[str], var: Path) -> None:
        self.port = port
        self.workflows = workflows
        self.var = var
        self.latencies: list[float] = []
        self.frames = 0
        self.procs: list[subprocess.Popen[bytes]] = []
        self.pids: list[int] = []

    def launch(self, count: int, processes: int) -> None:
        share = -(-count // processes)
        with open(self.var / "sse-clients.log", "ab") as errors:
            for first in range(0, count, share):
                self.procs.append(subprocess.Popen(
                    [sys.executable, "-m", "bench._sse_clients", "--port", str(self.port), "--first", str(first),
                     "--count", str(min(share, count - first)), "--workflows", ",".join(self.workflows)],
                    cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors, start_new_session=True))
        self.pids = [proc.pid for proc in self.procs]

    async def connected(self) -> None:
        for proc in self.procs:
            line = await asyncio.to_thread(self._line, proc)
            if line != b"connected":
                raise RuntimeError(f"a client process failed to connect; see {self.var}/sse-clients.log")

    @staticmethod
    def _line(proc: subprocess.Popen[bytes]) -> bytes:
        assert proc.stdout is not None
        return proc.stdout.readline().strip()

    def tell(self, command: bytes) -> None:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(command + b"\n")
            proc.stdin.flush()

    async def settle(self, limit_s: float) -> float:
        """Waits until no client saw a delivery latency over SETTLED_S in the last second (the
        backlog of the connecting phase drained), at most `limit_s`; the seconds it took."""
        began = time.monotonic()
        while time.monotonic() - began < limit_s:
            await asyncio.sleep(1.0)
            self.tell(b"probe")
            worst = [json.loads(await asyncio.to_thread(self._line, proc))["worst"] for proc in self.procs]
            if max(worst) < SETTLED_S:
                break
        return time.monotonic() - began

    async def collect(self) -> None:
        self.tell(b"stop")
        for proc in self.procs:
            result = json.loads(await asyncio.to_thread(self._line, proc))
            self.latencies += result["latencies"]
            self.frames += result["frames"]

    async def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


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
    subscribers = Subscribers(gateway_port, workflow_ids(WORKFLOWS), var)
    try:
        deadline = time.monotonic() + 30
        while not http_ready(f"http://127.0.0.1:{gateway_port}/healthz"):
            if time.monotonic() > deadline or gateway.poll() is not None:
                raise RuntimeError(f"gateway did not start; see {var}")
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
        rss_before = rss_kib(gateway.pid)
        started = time.monotonic()
        subscribers.launch(count, CLIENT_PROCESSES(count))
        await subscribers.connected()
        connect_s = time.monotonic() - started
        await asyncio.sleep(2.0)  # every subscriber past its snapshot, the feeds running
        rss_after = rss_kib(gateway.pid)
        settle_s = await subscribers.settle(SETTLE_LIMIT_S)
        cpu = {"gateway": cpu_seconds(gateway.pid), "scheduler double": cpu_seconds(double.pid),
               "subscribers": sum(cpu_seconds(pid) for pid in subscribers.pids)}
        subscribers.tell(b"start")
        began = time.monotonic()
        with profiled({"gateway": gateway.pid}, f"sse_fanout-{count}"):
            await asyncio.sleep(window_s)
        cpu = {"gateway": cpu_seconds(gateway.pid) - cpu["gateway"],
               "scheduler double": cpu_seconds(double.pid) - cpu["scheduler double"],
               "subscribers": sum(cpu_seconds(pid) for pid in subscribers.pids) - cpu["subscribers"]}
        await subscribers.collect()
        elapsed = time.monotonic() - began
        samples = subscribers.latencies
        result = {
            "subscribers": count,
            "connect_s": round(connect_s, 2),
            "settle_s": round(settle_s, 1),  # until the connecting phase's backlog drained
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
    counts = [1000] if quick else [1000, 5000, 10000]
    window_s = 3.0 if quick else 10.0
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
