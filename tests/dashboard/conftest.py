"""The suite (storage, scheduler, gateway, runner) and the ComfyUI double, as in tests/integration,
started once for tests/dashboard; plus headless Chromium (Debian's /usr/bin/chromium) driven by
Playwright's Python package (never `playwright install`).
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.devrun import Suite, free_port
from tests.integration.fleet import start_double

NODE_DELAY_MS = 150
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# No network but loopback (browser-tests.md): Chromium's background services resolve nothing.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE localhost , EXCLUDE 127.0.0.1",
]


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
              comfyui_url=double, runner_tags="gpu,fast",
              # Every browser test signs in with the one dev token within seconds of the others:
              # above the default 40 requests per 10 s (the dashboard waits out a 429 by itself).
              extra_env={"SCHEDULER_LEASE_SECONDS": "3", "SCHEDULER_HEARTBEAT_SECONDS": "0.5",
                         "GATEWAY_RATE_LIMIT_REQUESTS": "400"})
    try:
        s.up()
        yield s
    finally:
        s.down()
        for name in ("storage", "scheduler", "gateway", "runner"):
            log = var / f"{name}.log"
            if log.exists():
                sys.stderr.write(f"\n--- {name}.log (tail) ---\n" + "\n".join(log.read_text().splitlines()[-20:]))


# Module scope: sync Playwright keeps an event loop running in this thread while it is open,
# which async tests of another module (test_static_files.py) must not meet.
@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: install the Debian package `chromium` to run the dashboard tests")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()
