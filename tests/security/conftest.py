"""The suite as processes on loopback (storage, scheduler, gateway; no runner), as `make run`
starts it: every process gets the suite's service token (services/devrun.py)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.devrun import Suite, free_port


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Suite]:
    var: Path = tmp_path_factory.mktemp("var")
    s = Suite(var_dir=var, scheduler_port=free_port(), storage_port=free_port(), gateway_port=free_port(),
              extra_env={"GATEWAY_RATE_LIMIT_REQUESTS": "0"})
    try:
        s.up()
        yield s
    finally:
        s.down()
        for name in ("storage", "scheduler", "gateway"):
            log = var / f"{name}.log"
            if log.exists():
                sys.stderr.write(f"\n--- {name}.log (tail) ---\n" + "\n".join(log.read_text().splitlines()[-20:]))
