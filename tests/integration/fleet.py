"""A suite with several runner agents, each driving its own ComfyUI double, for the
scheduling and runner-loss tests. Everything a test checks goes through the gateway's public
API, except what the doubles received (ComfyUI's own /queue and /history).

Every workflow here loads its own uploaded image, scales it and saves it under a prefix unique
to the workflow, so no node is cached and each prompt in a double's history names its workflow.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
from PIL import Image

from services.devrun import ROOT, Suite, free_port, http_ready

T = TypeVar("T")

WORKFLOW = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "$file(photo)"}},
    "2": {"class_type": "ImageScale", "inputs": {"image": ["1", 0], "upscale_method": "nearest-exact",
                                                 "width": 32, "height": 24, "crop": "disabled"}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "$text(prefix)"}},
}
# Also saved under a fresh random prefix: a repeated attempt is not served from ComfyUI's cache
# (node 4 runs every time), so it can be caught mid-run too.
EVERY_ATTEMPT_RUNS = {**WORKFLOW, "4": {"class_type": "SaveImage",
                                        "inputs": {"images": ["2", 0], "filename_prefix": "$random()"}}}
TERMINAL = {"completed", "failed", "cancelled", "invalid"}


@dataclass
class Double:
    url: str
    proc: subprocess.Popen[bytes]
    root: Path

    def queue_size(self) -> int:
        q = httpx.get(f"{self.url}/queue", timeout=5).json()
        return len(q["queue_running"]) + len(q["queue_pending"])

    def prefixes(self) -> Counter[str]:
        """How many prompts of each workflow prefix this ComfyUI received and finished."""
        history = httpx.get(f"{self.url}/history", timeout=5).json()
        return Counter(entry["prompt"][2]["3"]["inputs"]["filename_prefix"] for entry in history.values())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def start_double(root: Path, node_delay_ms: int) -> Double:
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    with open(root / "double.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.comfyui_double", "--host", "127.0.0.1", "--port", str(port),
             "--root", str(root), "--node-delay-ms", str(node_delay_ms)],
            cwd=ROOT, stdout=log, stderr=log,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while not http_ready(f"{url}/system_stats"):
        assert proc.poll() is None, (root / "double.log").read_text()
        assert time.monotonic() < deadline, "ComfyUI double did not start"
        time.sleep(0.05)
    return Double(url, proc, root)


@dataclass
class Fleet:
    """The suite plus the doubles; runners are started by name with `add_runner`."""

    suite: Suite
    doubles: dict[str, Double] = field(default_factory=dict)
    client: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.client = httpx.Client(base_url=self.suite.gateway_url, timeout=30,
                                   headers={"Authorization": f"Bearer {self.suite.token}"})

    def add_runner(self, name: str, double: Double, tags: str = "", slots: int = 1) -> str:
        self.doubles[name] = double
        welcomed = self.welcomes(name)
        key = self.suite.start_runner(name, double.url, tags, slots)
        wait_for(lambda: self.welcomes(name) > welcomed, 60, f"runner {name} welcomed")
        return key

    def restart_runner(self, name: str, tags: str = "", slots: int = 1) -> None:
        self.add_runner(name, self.doubles[name], tags, slots)

    def welcomes(self, name: str) -> int:
        log = self.suite.var_dir / f"runner-{name}.log"
        return log.read_text(errors="replace").count("welcomed as runner") if log.exists() else 0

    def runner_id(self, name: str) -> str:
        text = (self.suite.var_dir / f"runner-{name}.log").read_text(errors="replace")
        return re.findall(r"welcomed as runner (\S+)", text)[-1]

    def submit(self, prefix: str, tags: str = "", color: tuple[int, int, int] = (200, 30, 90),
               graph: dict[str, Any] = WORKFLOW) -> str:
        data = {"name": prefix, "$prefix": prefix}
        if tags:
            data["tags"] = tags
        files = {"workflow_json": ("workflow.json", json.dumps(graph), "application/json"),
                 "$photo": ("photo.png", png(color), "image/png")}
        reply = self.client.post("/v1/workflow", data=data, files=files)
        assert reply.status_code == 201, reply.text
        return str(reply.json()["id"])

    def get(self, workflow_id: str) -> dict[str, Any]:
        reply = self.client.get(f"/v1/workflow/{workflow_id}")
        assert reply.status_code == 200, reply.text
        return dict(reply.json())

    def wait_status(self, workflow_id: str, statuses: set[str], timeout: float) -> dict[str, Any]:
        return wait_for(lambda: (wf := self.get(workflow_id))["status"] in statuses and wf, timeout,
                        f"workflow {workflow_id} in {statuses}")

    def close(self) -> None:
        self.client.close()
        self.suite.down()
        for double in self.doubles.values():
            double.stop()


def png(color: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (40, 30), color).save(out, format="PNG")
    return out.getvalue()


def wait_for(check: Callable[[], T | bool | None], timeout: float, what: str, interval: float = 0.1) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@contextlib.contextmanager
def fleet_suite(var: Path, **scheduler_env: str) -> Iterator[Fleet]:
    """Storage, scheduler and gateway (no runner yet) with SCHEDULER_* settings from `scheduler_env`
    and no rate limit."""
    # These tests poll the public API; the per-token rate limit is not what they are about.
    suite = Suite(var_dir=var, scheduler_port=free_port(), storage_port=free_port(), gateway_port=free_port(),
                  extra_env={"GATEWAY_RATE_LIMIT_REQUESTS": "0", **scheduler_env})
    fleet = None
    try:
        suite.up()
        fleet = Fleet(suite)
        yield fleet
    finally:
        if fleet is not None:
            fleet.close()
        else:
            suite.down()
        for log in sorted(var.glob("*.log")):
            sys.stderr.write(f"\n--- {log.name} (tail) ---\n" + "\n".join(log.read_text().splitlines()[-15:]))
