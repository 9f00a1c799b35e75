"""`make run`: the whole suite as local processes with embedded defaults.

Starts storage (gRPC 127.0.0.1:50052), scheduler (gRPC 127.0.0.1:50051) and gateway
(http://127.0.0.1:8080), plus a runner when COMFYUI_URL is set; waits until each answers;
prints the URL and the development API token (also in ./var/dev-token). Ctrl-C stops all.

`Suite` is also what the integration tests use to start the same processes on free ports.

Every process gets the suite's service token (./var/service-token, made once, 0600) that
storage demands of its callers (services/common/service_auth.py). With `tls`, the gRPC ports
use mTLS and the gateway HTTPS, all with that one certificate (tests/security).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import ssl
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


@dataclass(frozen=True)
class SuiteTls:
    """One certificate (serverAuth + clientAuth, for 127.0.0.1) for every process, and its CA."""

    cert: Path
    key: Path
    ca: Path

    def env(self) -> dict[str, str]:
        return {"COMFYFLEET_TLS_CERT_FILE": str(self.cert), "COMFYFLEET_TLS_KEY_FILE": str(self.key),
                "COMFYFLEET_TLS_CA_FILE": str(self.ca),
                "GATEWAY_TLS_CERT_FILE": str(self.cert), "GATEWAY_TLS_KEY_FILE": str(self.key)}

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(self.ca.read_bytes(), self.key.read_bytes(), self.cert.read_bytes())

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))


def ensure_service_token(path: Path) -> str:
    """The service token in `path`; a new random one (mode 0600) when the file is missing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
    return path.read_text().strip()


def grpc_health(address: str, timeout: float = 0.5, tls: SuiteTls | None = None) -> int | None:
    """The health status (health_pb2.HealthCheckResponse.SERVING, ...), or None without an answer."""
    try:
        with (grpc.secure_channel(address, tls.channel_credentials()) if tls else grpc.insecure_channel(address)) \
                as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
            return int(reply.status)
    except grpc.RpcError:
        return None


def grpc_ready(address: str, timeout: float = 0.5, tls: SuiteTls | None = None) -> bool:
    return grpc_health(address, timeout, tls) == health_pb2.HealthCheckResponse.SERVING


def http_ready(url: str, timeout: float = 0.5, context: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as reply:
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
    tls: SuiteTls | None = None  # mTLS between the services, HTTPS on the gateway

    @property
    def gateway_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.gateway_port}"

    @property
    def service_token(self) -> str:
        return ensure_service_token(self.var_dir / "service-token")

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
            "COMFYFLEET_SERVICE_TOKEN": "",  # the suite's own token: the file below
            "COMFYFLEET_SERVICE_TOKEN_FILE": f"{var}/service-token",
            **(self.tls.env() if self.tls else {}),
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
        ensure_service_token(self.var_dir / "service-token")
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
            return grpc_ready(f"127.0.0.1:{self.storage_port}", tls=self.tls)
        if name == "scheduler":
            ready = grpc_ready(f"127.0.0.1:{self.scheduler_port}", tls=self.tls)
            return ready and (self.var_dir / "dev-token").exists()
        if name == "scheduler-standby":  # listening; SERVING only once it takes over
            return grpc_health(f"127.0.0.1:{self.standby_port}", tls=self.tls) is not None
        if name == "gateway":
            return http_ready(f"{self.gateway_url}/healthz", context=self.tls.ssl_context() if self.tls else None)
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
        print(f"internal gRPC calls to storage need the service token in {var / 'service-token'}")
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
