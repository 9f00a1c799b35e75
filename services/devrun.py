"""`make run`: the whole suite as local processes with embedded defaults.

Starts storage (gRPC 127.0.0.1:50052), scheduler (gRPC 127.0.0.1:50051) and gateway
(http://127.0.0.1:8080), plus a runner when COMFYUI_URL is set; waits until each answers;
prints the URL and the development API token (also in ./var/dev-token). Ctrl-C stops all.

`Suite` is also what the integration tests use to start the same processes on free ports.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def grpc_health(address: str, timeout: float = 0.5) -> int | None:
    """The health status (health_pb2.HealthCheckResponse.SERVING, ...), or None without an answer."""
    try:
        with grpc.insecure_channel(address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
            return int(reply.status)
    except grpc.RpcError:
        return None


def grpc_ready(address: str, timeout: float = 0.5) -> bool:
    return grpc_health(address, timeout) == health_pb2.HealthCheckResponse.SERVING


def http_ready(url: str, timeout: float = 0.5) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return bool(reply.status == 200)
    except OSError:
        return False


@dataclass
class Suite:
    """The suite's processes: ports, state directory, logs; start/stop/restart by name."""

    var_dir: Path
    scheduler_port: int = 50051
    storage_port: int = 50052
    gateway_port: int = 8080
    # A second scheduler process, the standby (needs a Postgres SCHEDULER_DATABASE_URL in
    # extra_env): started by start("scheduler-standby"); the gateway and runners get both.
    standby_port: int | None = None
    comfyui_url: str | None = None
    runner_tags: str = ""
    runner_slots: int = 1
    extra_env: dict[str, str] = field(default_factory=dict)
    # name -> port of the process's GET /metrics (scheduler, storage, runners), a free one
    # picked at start; None = each service's default port (make run).
    metrics_ports: dict[str, int] | None = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def scheduler_addresses(self) -> str:
        ports = [self.scheduler_port] + ([self.standby_port] if self.standby_port else [])
        return ",".join(f"127.0.0.1:{p}" for p in ports)

    @property
    def token(self) -> str:
        return (self.var_dir / "dev-token").read_text().strip()

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        var = str(self.var_dir)
        env.update({
            "PYTHONUNBUFFERED": "1",
            "SCHEDULER_LISTEN": f"127.0.0.1:{self.scheduler_port}",
            "SCHEDULER_DATABASE_URL": f"sqlite+aiosqlite:///{var}/scheduler.db",
            "SCHEDULER_STORAGE": f"127.0.0.1:{self.storage_port}",
            "SCHEDULER_BOOTSTRAP_DIR": var,
            "STORAGE_LISTEN": f"127.0.0.1:{self.storage_port}",
            "STORAGE_LOCAL_DIR": f"{var}/objects",
            "STORAGE_URL_SIGNING_KEY_FILE": f"{var}/url-signing-key",
            "STORAGE_PUBLIC_URL": self.gateway_url,
            "GATEWAY_HOST": "127.0.0.1",
            "GATEWAY_PORT": str(self.gateway_port),
            "GATEWAY_SCHEDULER": self.scheduler_addresses,
            "GATEWAY_STORAGE": f"127.0.0.1:{self.storage_port}",
        })
        env.update(self.extra_env)
        return env

    def start(self, name: str) -> None:
        if name == "runner":
            assert self.comfyui_url, "a runner needs COMFYUI_URL"
            self.start_runner("local-runner", self.comfyui_url, self.runner_tags, self.runner_slots, key="runner")
            return
        if name == "pool":  # drives every runner registered with POST /v1/runner
            self._spawn(name, [sys.executable, "-m", "services.runner", "--pool",
                               "--scheduler", self.scheduler_addresses,
                               "--storage", f"127.0.0.1:{self.storage_port}",
                               "--token-file", str(self.var_dir / "pool-token")])
            return
        if name == "scheduler-standby":
            self._spawn(name, [sys.executable, "-m", "services.scheduler"],
                        {"SCHEDULER_LISTEN": f"127.0.0.1:{self.standby_port}"})
            return
        self._spawn(name, [sys.executable, "-m", f"services.{name}"])

    def start_runner(self, name: str, comfyui_url: str, tags: str = "", slots: int = 1, *, key: str = "") -> str:
        """Starts a runner agent for `comfyui_url`; its process (and log) is `runner-<name>`
        unless `key` says otherwise. Returns the key for wait_ready/kill."""
        key = key or f"runner-{name}"
        args = [
            sys.executable, "-m", "services.runner",
            "--scheduler", self.scheduler_addresses,
            "--storage", f"127.0.0.1:{self.storage_port}",
            "--comfyui-url", comfyui_url,
            "--token-file", str(self.var_dir / "runner-token"),
            "--slots", str(slots),
            "--name", name,
        ]
        if tags:
            args += ["--tags", tags]
        self._spawn(key, args)
        return key

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        if self.metrics_ports is not None:
            port = self.metrics_ports.setdefault(name, free_port())
            env = {**{f"{svc}_METRICS_PORT": str(port) for svc in ("SCHEDULER", "STORAGE", "RUNNER")}, **(env or {})}
        self.var_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.var_dir / f"{name}.log", "ab")
        self.procs[name] = subprocess.Popen(args, cwd=ROOT, env={**self._env(), **(env or {})}, stdout=log, stderr=log,
                                            start_new_session=True)
        log.close()

    def wait_ready(self, name: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self.procs[name]
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}; see {self.var_dir / (name + '.log')}")
            if self._ready(name):
                return
            time.sleep(0.1)
        raise TimeoutError(f"{name} not ready after {timeout}s; see {self.var_dir / (name + '.log')}")

    def _ready(self, name: str) -> bool:
        if name == "storage":
            return grpc_ready(f"127.0.0.1:{self.storage_port}")
        if name == "scheduler":
            return grpc_ready(f"127.0.0.1:{self.scheduler_port}") and (self.var_dir / "dev-token").exists()
        if name == "scheduler-standby":  # listening; SERVING only once it takes over
            return grpc_health(f"127.0.0.1:{self.standby_port}") is not None
        if name == "gateway":
            return http_ready(f"{self.gateway_url}/healthz")
        if name == "runner" or name.startswith("runner-"):
            log = self.var_dir / f"{name}.log"
            return log.exists() and "welcomed as runner" in log.read_text(errors="replace")
        if name == "pool":
            log = self.var_dir / "pool.log"
            return log.exists() and "runner pool:" in log.read_text(errors="replace")
        return True

    def up(self) -> None:
        for name in ("storage", "scheduler", "gateway"):
            self.start(name)
        for name in ("storage", "scheduler", "gateway"):
            self.wait_ready(name)
        if self.comfyui_url:
            self.start("runner")
            self.wait_ready("runner")

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.get(name)
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            if sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT):
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)

    def down(self) -> None:
        for name in reversed(list(self.procs)):
            self.kill(name, signal.SIGTERM)
        self.procs.clear()


def main() -> None:
    var = Path(os.environ.get("COMFYFLEET_VAR", ROOT / "var"))
    suite = Suite(var_dir=var, comfyui_url=os.environ.get("COMFYUI_URL") or None,
                  runner_tags=os.environ.get("RUNNER_TAGS", ""), runner_slots=int(os.environ.get("RUNNER_SLOTS", "1")),
                  metrics_ports=None)
    stop = False

    def on_signal(_sig: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        suite.up()
        suite.start("pool")
        suite.wait_ready("pool")
        print(f"\ncomfyfleet is running: {suite.gateway_url}")
        print(f"development API token (also in {var / 'dev-token'}):\n  {suite.token}")
        if suite.comfyui_url:
            print(f"runner driving ComfyUI at {suite.comfyui_url}")
        else:
            print("no runner: set COMFYUI_URL=http://host:8188 to start one")
        print("runner pool: drives every ComfyUI registered with POST /v1/runner")
        print(f"logs: {var}/*.log    Ctrl-C stops everything\n", flush=True)
        while not stop:
            for name, proc in suite.procs.items():
                if proc.poll() is not None:
                    print(f"{name} exited with {proc.returncode}; see {var / (name + '.log')}", file=sys.stderr)
                    stop = True
            time.sleep(0.5)
    finally:
        with contextlib.suppress(Exception):
            suite.down()
        print("stopped")


if __name__ == "__main__":
    main()
