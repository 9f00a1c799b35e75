"""The suite (storage, scheduler, gateway, runner) and the ComfyUI double, started once for
tests/sdk (package scope), as in tests/integration; plus the workflow the tests run.

The workflow loads an uploaded photo, scales it with a chosen method, saves it under a given
prefix, and streams a 4-image batch through SaveImageWebsocket, which reports step progress.
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from comfyfleet import Client
from PIL import Image

from services.devrun import Suite, free_port
from tests.integration.fleet import start_double

NODE_DELAY_MS = 150
RUNNER_TAGS = "gpu,fast"

WORKFLOW: dict[str, Any] = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "$file(photo)"}},
    "2": {
        "class_type": "ImageScale",
        "inputs": {"image": ["1", 0], "upscale_method": "$choice(method, nearest-exact, bilinear, area)",
                   "width": 64, "height": 48, "crop": "disabled"},
    },
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "$text(prefix, sdk)"}},
    "4": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 4, "color": 0}},
    "5": {"class_type": "SaveImageWebsocket", "inputs": {"images": ["4", 0]}},
}
# 100 progress ticks of NODE_DELAY_MS (15 s): time enough to cancel it from another process.
SLOW_WORKFLOW: dict[str, Any] = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 100, "color": 0}},
    "2": {"class_type": "SaveImageWebsocket", "inputs": {"images": ["1", 0]}},
}


def png(width: int, height: int, color: tuple[int, int, int] = (200, 30, 90)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="package")
def double(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    started = start_double(tmp_path_factory.mktemp("comfyui"), NODE_DELAY_MS)
    try:
        yield started.url
    finally:
        started.stop()


@pytest.fixture(scope="package")
def suite(tmp_path_factory: pytest.TempPathFactory, double: str) -> Iterator[Suite]:
    var: Path = tmp_path_factory.mktemp("var")
    s = Suite(var_dir=var, scheduler_port=free_port(), storage_port=free_port(), gateway_port=free_port(),
              comfyui_url=double, runner_tags=RUNNER_TAGS,
              extra_env={"SCHEDULER_LEASE_SECONDS": "3", "SCHEDULER_HEARTBEAT_SECONDS": "0.5"})
    try:
        s.up()
        yield s
    finally:
        s.down()
        for name in ("storage", "scheduler", "gateway", "runner"):
            log = var / f"{name}.log"
            if log.exists():
                sys.stderr.write(f"\n--- {name}.log (tail) ---\n" + "\n".join(log.read_text().splitlines()[-20:]))


@pytest.fixture
def client(suite: Suite) -> Iterator[Client]:
    with Client(suite.gateway_url, token=suite.token, timeout=30) as c:
        yield c


@pytest.fixture
def workflow_file(tmp_path: Path) -> Path:
    path = tmp_path / "workflow.json"
    path.write_text(json.dumps(WORKFLOW))
    return path


@pytest.fixture
def photo_file(tmp_path: Path) -> Path:
    path = tmp_path / "cat.png"
    path.write_bytes(png(40, 30))
    return path
