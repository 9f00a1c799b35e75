"""What the benchmarks share: statistics, figures, request bodies, and a fleet to measure.

`Fleet` starts the suite (storage, scheduler, gateway) as processes on free ports under a
temporary directory, optionally ComfyUI doubles (all in one process, bench._doubles) and
runner agents (one process each), and stops all of it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.devrun import ROOT, Suite, free_port

# EmptyImage -> ImageInvert -> SaveImage: the trivial workflow of the overhead and throughput runs.
INVERT = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 3368652}},
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "bench"}},
}

# A small workflow with one $text and one #choice: the create of submit and scale.
SMALL = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
    "2": {"class_type": "ImageScale", "inputs": {"image": ["1", 0], "width": 16, "height": 16, "crop": "disabled",
                                                 "upscale_method": "$choice(method, nearest-exact, bilinear)"}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "$text(prefix, bench)"}},
}


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- statistics and figures ----------------------------------------------------------------


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), nearest rank; NaN for no samples."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summary_ms(samples_s: Sequence[float]) -> dict[str, float]:
    """Seconds in, milliseconds out: n, median, p99, min, max."""
    ms = [s * 1000 for s in samples_s]
    if not ms:
        return {"n": 0, "median": math.nan, "p99": math.nan, "min": math.nan, "max": math.nan}
    return {"n": len(ms), "median": round(statistics.median(ms), 2), "p99": round(percentile(ms, 99), 2),
            "min": round(min(ms), 2), "max": round(max(ms), 2)}


def figure(name: str, value: float, unit: str = "", *, baseline: float | None = None, ratio: float | None = None,
           target: str | None = None, met: bool | None = None, note: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "value": _round(value), "unit": unit}
    if baseline is not None:
        out["baseline"] = _round(baseline)
    if ratio is None and baseline:
        ratio = value / baseline
    if ratio is not None:
        out["ratio"] = _round(ratio, 3)
    if target is not None:
        out["target"] = target
    out["met"] = met
    if note:
        out["note"] = note
    return out


def _round(value: float, digits: int = 2) -> float:
    return value if value is None or math.isnan(value) else round(value, digits)


# -- request bodies ------------------------------------------------------------------------


def multipart(fields: list[tuple[str, str | bytes, str | None]]) -> tuple[bytes, str]:
    """(name, value, filename or None) parts -> (body, content type)."""
    boundary = "bench" + uuid.uuid4().hex
    out = bytearray()
    for name, value, filename in fields:
        out += f"--{boundary}\r\n".encode()
        if filename is None:
            out += f'Content-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        else:
            out += (f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                    "Content-Type: application/json\r\n\r\n").encode()
        out += value if isinstance(value, bytes) else value.encode()
        out += b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


def create_body(workflow: dict[str, Any] = SMALL, *, text: bool = True) -> tuple[bytes, str]:
    """The multipart body of POST /v1/workflow for `workflow` (one $text, one #choice for SMALL)."""
    fields: list[tuple[str, str | bytes, str | None]] = [
        ("name", "bench", None),
        ("workflow_json", json.dumps(workflow), "workflow.json"),
    ]
    if text:
        fields += [("$prefix", "bench_out", None), ("#method", "bilinear", None)]
    return multipart(fields)


# -- the fleet -----------------------------------------------------------------------------


@dataclass
class Fleet:
    """The suite plus optional doubles and runners, on free ports under a temporary directory."""

    doubles: int = 0
    runners: int = 0
    runner_slots: int = 1
    node_delay_ms: float = 0.0
    extra_env: dict[str, str] = field(default_factory=dict)
    keep: bool = False
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="comfyfleet-bench-")))
    suite: Suite | None = None
    double_ports: list[int] = field(default_factory=list)
    _doubles_proc: subprocess.Popen[bytes] | None = None
    _runner_procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        assert self.suite is not None
        return self.suite.gateway_url

    @property
    def token(self) -> str:
        assert self.suite is not None
        return self.suite.token

    @property
    def db_path(self) -> Path:
        return self.root / "var" / "scheduler.db"

    def pid(self, name: str) -> int:
        """The pid of `gateway`, `scheduler`, `storage`, `runner-<i>` or `doubles`."""
        if name.startswith("runner-"):
            return self._runner_procs[int(name[7:])].pid
        if name == "doubles":
            assert self._doubles_proc is not None
            return self._doubles_proc.pid
        assert self.suite is not None
        return self.suite.procs[name].pid

    def __enter__(self) -> Fleet:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def start(self) -> None:
        # The per-token rate limit and the tier's concurrent-workflow limit would cap every benchmark
        # at 429s and 403s: off and out of reach (the checks themselves still run and are measured).
        limits = self.root / "limits.toml"
        limits.write_text("[enterprise]\nconcurrent_workflows = 100000000\n")
        env = {"GATEWAY_RATE_LIMIT_REQUESTS": "0", "SCHEDULER_LIMITS_FILE": str(limits), **self.extra_env}
        self.suite = Suite(var_dir=self.root / "var", scheduler_port=free_port(), storage_port=free_port(),
                           gateway_port=free_port(), extra_env=env)
        self.suite.up()
        if self.doubles:
            self.start_doubles()
        if self.runners:
            self.start_runners(self.runners)

    def start_doubles(self) -> None:
        out = open(self.root / "doubles.out", "wb")
        err = open(self.root / "doubles.log", "ab")
        self._doubles_proc = subprocess.Popen(
            [sys.executable, "-m", "bench._doubles", "--count", str(self.doubles), "--root", str(self.root / "comfyui"),
             "--node-delay-ms", str(self.node_delay_ms)],
            cwd=ROOT, stdout=out, stderr=err, start_new_session=True)
        out.close()
        err.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            text = (self.root / "doubles.out").read_text()
            if text.strip():
                self.double_ports = json.loads(text.splitlines()[0])["ports"]
                return
            if self._doubles_proc.poll() is not None:
                raise RuntimeError(f"doubles exited; see {self.root / 'doubles.log'}")
            time.sleep(0.1)
        raise TimeoutError("ComfyUI doubles did not start")

    def start_runners(self, count: int, *, first: int = 0, wait: bool = True) -> None:
        """Runners first..first+count-1, runner i driving double i."""
        assert self.suite is not None and len(self.double_ports) >= first + count
        env = self.suite._env()
        logs = []
        for i in range(first, first + count):
            path = self.root / f"runner-{i}.log"
            logs.append(path)
            log_file = open(path, "ab")
            self._runner_procs.append(subprocess.Popen(
                [sys.executable, "-m", "services.runner",
                 "--scheduler", f"127.0.0.1:{self.suite.scheduler_port}",
                 "--storage", f"127.0.0.1:{self.suite.storage_port}",
                 "--comfyui-url", f"http://127.0.0.1:{self.double_ports[i]}",
                 # beside its ComfyUI, as in the chart: outputs read from its folders, not /view
                 "--comfyui-dir", str(self.root / "comfyui" / f"comfyui-{i}"),
                 "--token-file", str(self.suite.var_dir / "runner-token"),
                 "--slots", str(self.runner_slots), "--name", f"bench-runner-{i}", "--log-level", "WARNING"],
                cwd=ROOT, env=env, stdout=log_file, stderr=log_file, start_new_session=True))
            log_file.close()
        if wait:
            self.wait_runners(first + count)

    def wait_runners(self, count: int, timeout: float = 90) -> None:
        """Until `count` runners are connected (the scheduler's runners table says so)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for proc in self._runner_procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"a runner exited with {proc.returncode}; see {self.root}/runner-*.log")
            if self.connected_runners() >= count:
                return
            time.sleep(0.2)
        raise TimeoutError(f"runners not connected after {timeout}s; see {self.root}/runner-*.log")

    def connected_runners(self) -> int:
        """Runners that said Hello (upsert_runner) since this fleet started."""
        with contextlib.closing(sqlite3.connect(self.db_path, timeout=10)) as db:
            return int(db.execute("SELECT count(*) FROM runners WHERE last_seen_at IS NOT NULL").fetchone()[0])

    def stop(self) -> None:
        for proc in self._runner_procs:
            _terminate(proc)
        self._runner_procs.clear()
        if self._doubles_proc is not None:
            _terminate(self._doubles_proc)
            self._doubles_proc = None
        if self.suite is not None:
            with contextlib.suppress(Exception):
                self.suite.down()
        if not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its reaped children so far (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds each named process spent between `start()` and `stop()`."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.before: dict[str, float] = {}
        self.used: dict[str, float] = {}
        self.wall = 0.0

    def start(self) -> None:
        self.before = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self.wall = time.perf_counter()

    def stop(self) -> dict[str, float]:
        self.wall = time.perf_counter() - self.wall
        self.used = {name: round(cpu_seconds(pid) - self.before[name], 2) for name, pid in self.pids.items()}
        return self.used


def dev_user_id(db_path: Path) -> str:
    with contextlib.closing(sqlite3.connect(db_path, timeout=10)) as db:
        return str(db.execute("SELECT id FROM users WHERE name = 'dev'").fetchone()[0])


def env_flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0", "false", "no")
