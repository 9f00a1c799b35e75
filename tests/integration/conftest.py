"""The suite as separate processes on loopback, with the ComfyUI double as its ComfyUI."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.devrun import ROOT, Suite, free_port, http_ready
from tests.deploy.edge import EdgeSuite

NODE_DELAY_MS = 150


@pytest.fixture(scope="module")
def double(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("comfyui")
    port = free_port()
    log = open(root / "double.log", "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.comfyui_double", "--host", "127.0.0.1", "--port", str(port),
         "--root", str(root), "--node-delay-ms", str(NODE_DELAY_MS)],
        cwd=ROOT, stdout=log, stderr=log,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while not http_ready(f"{url}/system_stats"):
        assert proc.poll() is None, (root / "double.log").read_text()
        assert time.monotonic() < deadline, "ComfyUI double did not start"
        time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(10)
    log.close()


# "envoy": the same public API tests a second time, through Envoy in front of the gateway
# (tests/deploy/edge.py; suite.gateway_url is then Envoy's listener).
@pytest.fixture(scope="module", params=["direct", "envoy"])
def suite(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, double: str) -> Iterator[Suite]:
    var: Path = tmp_path_factory.mktemp("var")
    s = (EdgeSuite if request.param == "envoy" else Suite)(
        var_dir=var,
        scheduler_port=free_port(),
        storage_port=free_port(),
        gateway_port=free_port(),
        comfyui_url=double,
        runner_tags="gpu,fast",
        extra_env={"SCHEDULER_LEASE_SECONDS": "3", "SCHEDULER_HEARTBEAT_SECONDS": "0.5"},
    )
    try:
        s.up()
        yield s
    finally:
        s.down()
        for name in ("storage", "scheduler", "gateway", "runner"):
            log = var / f"{name}.log"
            if log.exists():
                sys.stderr.write(f"\n--- {name}.log (tail) ---\n" + "\n".join(log.read_text().splitlines()[-30:]))
