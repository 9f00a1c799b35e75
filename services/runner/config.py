"""The runner's settings: one frozen object, read once in `main` from flags and environment.

Every flag has an environment variable; a flag given on the command line wins over it.

    --scheduler       RUNNER_SCHEDULER        host:port of the scheduler       127.0.0.1:50051
                                              (or ip:port,ip:port: active + standby)
    --storage         RUNNER_STORAGE          host:port of the storage service 127.0.0.1:50052
    --comfyui-url     COMFYUI_URL             base URL of ComfyUI              http://127.0.0.1:8188
    --comfyui-dir     RUNNER_COMFYUI_DIR      the folder ComfyUI runs in, when (none)
                                              the runner shares its disk: outputs are read
                                              from its output/ and temp/, not by GET /view
    --tags            RUNNER_TAGS             comma-separated tags             (none)
    --slots           RUNNER_SLOTS            assignments run at once          1
    --name            RUNNER_NAME             name shown to users              the host name
    --token           RUNNER_TOKEN            runner token                     (required, or a file)
    --token-file      RUNNER_TOKEN_FILE       file holding the runner token
    --comfyui-down-timeout  RUNNER_COMFYUI_DOWN_TIMEOUT  seconds ComfyUI may stay unreachable
                                              before its running prompts fail  60
    --comfyui-unready-after RUNNER_COMFYUI_UNREADY_AFTER seconds ComfyUI may stay unreachable
                                              before the runner leaves the scheduler (unready)
                                              and hands back what ComfyUI never got  5
    --drain-timeout   RUNNER_DRAIN_TIMEOUT    seconds to let held work finish on SIGTERM  30
    --log-level       RUNNER_LOG_LEVEL        logging level                    INFO
    --pool            RUNNER_POOL=1           pool mode: drive every runner registered through
                                              the API (the token is then a pool token; the
                                              ComfyUI URL, name and tags come from each runner)
    --metrics-port    RUNNER_METRICS_PORT     GET /metrics over HTTP (0 = off)  9463
    --metrics-host    RUNNER_METRICS_HOST     address /metrics binds           127.0.0.1
    --log-format      COMFYFLEET_LOG_FORMAT   log lines as text or json        text
                      COMFYFLEET_SERVICE_TOKEN[_FILE]  the suite's service token, shown to
                                              storage (services/common/service_auth.py)
                      COMFYFLEET_TLS_CERT_FILE, _KEY_FILE, _CA_FILE  mTLS to the scheduler
                                              and storage (services/common/tls.py)

Nothing else in the package reads `os.environ`.
"""

from __future__ import annotations

import argparse
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from services.common.logs import LogFormat, parse_log_format
from services.common.service_auth import PLAIN, ServiceSecurity
from services.runner.errors import ConfigError


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff with full jitter: delay n is uniform in [0, min(cap, base*2^n)]."""

    base_s: float = 0.5
    cap_s: float = 30.0

    def delay(self, attempt: int, jitter: float) -> float:
        """Seconds to wait before retry number `attempt` (0-based); `jitter` is uniform in [0, 1)."""
        return jitter * min(self.cap_s, self.base_s * 2 ** min(attempt, 32))


@dataclass(frozen=True)
class RunnerSettings:
    scheduler: str = "127.0.0.1:50051"
    storage: str = "127.0.0.1:50052"
    comfyui_url: str = "http://127.0.0.1:8188"
    comfyui_dir: str = ""  # ComfyUI's folder, read directly (comfyui_files.py); "" = GET /view
    tags: tuple[str, ...] = ()
    slots: int = 1
    name: str = ""
    token: str = ""
    # How long ComfyUI may stay unreachable before the prompts it holds are failed.
    comfyui_down_timeout_s: float = 60.0
    # ComfyUI unreachable this long: the runner leaves the scheduler (unready, takes no work)
    # and hands back assignments that ComfyUI never took.
    comfyui_unready_after_s: float = 5.0
    # On SIGTERM: how long held work may take to finish before it is cancelled.
    drain_timeout_s: float = 30.0
    log_level: str = "INFO"
    # Reconnecting to the scheduler and to ComfyUI's websocket.
    scheduler_backoff: Backoff = field(default_factory=Backoff)
    comfyui_backoff: Backoff = field(default_factory=lambda: Backoff(base_s=0.2, cap_s=5.0))
    # At most one progress event per node per this interval (the last tick always goes out).
    progress_interval_s: float = 0.1
    # With no websocket message for this long, a prompt is checked against /queue and /history.
    poll_interval_s: float = 15.0
    # A prompt ComfyUI accepted has its queue position read (GET /queue) only if the websocket
    # has not said it started within this time: an idle ComfyUI starts it within milliseconds,
    # and a read then could only find it running (while costing both sides a request).
    queue_read_grace_s: float = 0.05
    # How long to wait for Welcome after Hello.
    welcome_timeout_s: float = 10.0
    # Used when Welcome leaves them unset.
    default_heartbeat_s: float = 10.0
    default_lease_s: float = 30.0
    # Timeout of one ComfyUI HTTP request (uploads and /view downloads stream and may take longer).
    comfyui_request_timeout_s: float = 30.0
    # Pool mode (services/runner/pool.py): one agent per runner registered through the API.
    pool: bool = False
    # Set by the pool for each agent it runs: the registered runner (Hello.runner_id) and the
    # headers sent with every request to its ComfyUI.
    runner_id: str = ""
    comfyui_headers: tuple[tuple[str, str], ...] = ()
    # GET /metrics (services/runner/metrics.py) and the log lines' format (services/common/logs.py).
    metrics_port: int = 9463
    metrics_host: str = "127.0.0.1"
    log_format: LogFormat = "text"
    # The service token shown to storage, and mTLS to the scheduler and storage.
    security: ServiceSecurity = PLAIN


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m services.runner", description=__doc__.split("\n\n")[0])
    p.add_argument("--scheduler", help="scheduler host:port (RUNNER_SCHEDULER)")
    p.add_argument("--storage", help="storage service host:port (RUNNER_STORAGE)")
    p.add_argument("--comfyui-url", help="ComfyUI base URL (COMFYUI_URL)")
    p.add_argument("--comfyui-dir", help="the folder ComfyUI runs in, to read outputs from (RUNNER_COMFYUI_DIR)")
    p.add_argument("--tags", help="comma-separated tags (RUNNER_TAGS)")
    p.add_argument("--slots", help="assignments run at once (RUNNER_SLOTS)")
    p.add_argument("--name", help="runner name (RUNNER_NAME)")
    p.add_argument("--token", help="runner token (RUNNER_TOKEN)")
    p.add_argument("--token-file", help="file holding the runner token (RUNNER_TOKEN_FILE)")
    p.add_argument("--comfyui-down-timeout", help="seconds (RUNNER_COMFYUI_DOWN_TIMEOUT)")
    p.add_argument("--comfyui-unready-after", help="seconds (RUNNER_COMFYUI_UNREADY_AFTER)")
    p.add_argument("--drain-timeout", help="seconds (RUNNER_DRAIN_TIMEOUT)")
    p.add_argument("--log-level", help="logging level (RUNNER_LOG_LEVEL)")
    p.add_argument("--pool", action="store_true", default=None,
                   help="drive every runner registered through the API (RUNNER_POOL=1)")
    p.add_argument("--metrics-port", help="port of GET /metrics, 0 = off (RUNNER_METRICS_PORT)")
    p.add_argument("--metrics-host", help="address GET /metrics binds (RUNNER_METRICS_HOST)")
    p.add_argument("--log-format", help="text or json (COMFYFLEET_LOG_FORMAT)")
    return p


def _positive_float(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, got {raw!r}") from None
    if value <= 0:
        raise ConfigError(f"{name} must be > 0, got {raw!r}")
    return value


def _read_token_file(path: str) -> str:
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except OSError as err:
        raise ConfigError(f"cannot read token file {path!r}: {err.strerror}") from None
    if not token:
        raise ConfigError(f"token file {path!r} is empty")
    return token


def load_settings(argv: Sequence[str], environ: Mapping[str, str]) -> RunnerSettings:
    """Settings from `argv` (without the program name) and `environ`; flags win."""
    args = _parser().parse_args(list(argv))

    def pick(flag: str | None, env: str) -> str | None:
        if flag is not None:
            return flag
        value = environ.get(env)
        return value if value else None

    defaults = RunnerSettings()
    slots_raw = pick(args.slots, "RUNNER_SLOTS") or "1"
    try:
        slots = int(slots_raw)
    except ValueError:
        raise ConfigError(f"slots must be an integer, got {slots_raw!r}") from None
    if slots < 1:
        raise ConfigError(f"slots must be >= 1, got {slots}")

    if args.token:
        token = args.token
    elif args.token_file:
        token = _read_token_file(args.token_file)
    elif environ.get("RUNNER_TOKEN"):
        token = environ["RUNNER_TOKEN"]
    elif environ.get("RUNNER_TOKEN_FILE"):
        token = _read_token_file(environ["RUNNER_TOKEN_FILE"])
    else:
        raise ConfigError("a runner token is required: --token, --token-file, RUNNER_TOKEN or RUNNER_TOKEN_FILE")

    tags_raw = pick(args.tags, "RUNNER_TAGS") or ""
    tags = tuple(dict.fromkeys(t.strip() for t in tags_raw.split(",") if t.strip()))
    comfyui_url = (pick(args.comfyui_url, "COMFYUI_URL") or defaults.comfyui_url).rstrip("/")
    if not comfyui_url.startswith(("http://", "https://")):
        raise ConfigError(f"ComfyUI URL must start with http:// or https://, got {comfyui_url!r}")

    pool = bool(args.pool) or environ.get("RUNNER_POOL", "").lower() in ("1", "true", "yes")
    comfyui_dir = pick(args.comfyui_dir, "RUNNER_COMFYUI_DIR") or ""
    if comfyui_dir and pool:
        raise ConfigError("--comfyui-dir names one ComfyUI's folder; a pool drives many (leave it out with --pool)")
    if comfyui_dir and not Path(comfyui_dir).is_dir():
        raise ConfigError(f"--comfyui-dir {comfyui_dir!r} is not a directory (the folder ComfyUI runs in)")

    down = pick(args.comfyui_down_timeout, "RUNNER_COMFYUI_DOWN_TIMEOUT")
    drain = pick(args.drain_timeout, "RUNNER_DRAIN_TIMEOUT")
    unready = pick(args.comfyui_unready_after, "RUNNER_COMFYUI_UNREADY_AFTER")
    return RunnerSettings(
        scheduler=pick(args.scheduler, "RUNNER_SCHEDULER") or defaults.scheduler,
        storage=pick(args.storage, "RUNNER_STORAGE") or defaults.storage,
        comfyui_url=comfyui_url,
        comfyui_dir=comfyui_dir,
        tags=tags,
        slots=slots,
        name=pick(args.name, "RUNNER_NAME") or socket.gethostname(),
        token=token,
        comfyui_down_timeout_s=_positive_float("comfyui down timeout", down) if down else 60.0,
        drain_timeout_s=_positive_float("drain timeout", drain) if drain else 30.0,
        comfyui_unready_after_s=_positive_float("comfyui unready after", unready) if unready else 5.0,
        log_level=(pick(args.log_level, "RUNNER_LOG_LEVEL") or "INFO").upper(),
        pool=pool,
        metrics_port=_port("metrics port", pick(args.metrics_port, "RUNNER_METRICS_PORT") or "9463"),
        metrics_host=pick(args.metrics_host, "RUNNER_METRICS_HOST") or defaults.metrics_host,
        log_format=_log_format(pick(args.log_format, "COMFYFLEET_LOG_FORMAT") or "text"),
        security=_security(environ),
    )


def _security(environ: Mapping[str, str]) -> ServiceSecurity:
    try:
        return ServiceSecurity.from_env(environ)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def _port(name: str, raw: str) -> int:
    if not raw.isdigit() or not 0 <= int(raw) <= 65535:
        raise ConfigError(f"{name} must be a port number (0 = off), got {raw!r}")
    return int(raw)


def _log_format(raw: str) -> LogFormat:
    try:
        return parse_log_format(raw)
    except ValueError as err:
        raise ConfigError(str(err)) from None
