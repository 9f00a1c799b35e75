"""The suite as processes on loopback with the ComfyUI double, JSON logs on, a /metrics port each."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.devrun import Suite, free_port
from tests.integration.conftest import double  # noqa: F401  (the ComfyUI double fixture)


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory, double: str) -> Iterator[Suite]:  # noqa: F811
    var: Path = tmp_path_factory.mktemp("var")
    s = Suite(
        var_dir=var,
        scheduler_port=free_port(),
        storage_port=free_port(),
        gateway_port=free_port(),
        comfyui_url=double,
        runner_tags="gpu",
        extra_env={"COMFYFLEET_LOG_FORMAT": "json", "SCHEDULER_LEASE_SECONDS": "3",
                   "SCHEDULER_HEARTBEAT_SECONDS": "0.5"},
    )
    try:
        s.up()
        yield s
    finally:
        s.down()
        for name in ("storage", "scheduler", "gateway", "runner"):
            log = var / f"{name}.log"
            if log.exists():
                sys.stderr.write(f"\n--- {name}.log (tail) ---\n" + "\n".join(log.read_text().splitlines()[-20:]))
