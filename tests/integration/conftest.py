"""The suite as separate processes on loopback, with the ComfyUI double as its ComfyUI."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from services.devrun import Suite, free_port
from tests.deploy.edge import EdgeSuite
from tests.integration.fleet import start_double

NODE_DELAY_MS = 150


@pytest.fixture(scope="module")
def double(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    started = start_double(tmp_path_factory.mktemp("comfyui"), NODE_DELAY_MS)
    try:
        yield started.url
    finally:
        started.stop()


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


@pytest.fixture
def client(suite: Suite) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=suite.gateway_url, headers={"Authorization": f"Bearer {suite.token}"},
                      timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def second_gateway(suite: Suite) -> Iterator[str]:
    """Another gateway process in front of the same scheduler and storage."""
    other = Suite(var_dir=suite.var_dir, scheduler_port=suite.scheduler_port, storage_port=suite.storage_port,
                  gateway_port=free_port(), extra_env=dict(suite.extra_env))
    other.procs = {}
    try:
        other.start("gateway")
        other.wait_ready("gateway")
        yield other.gateway_url
    finally:
        other.down()
