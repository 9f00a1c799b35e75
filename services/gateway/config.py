"""The gateway's settings: one frozen object, read from the environment once in `main`.

| variable                        | default            | meaning                                   |
|---------------------------------|--------------------|-------------------------------------------|
| GATEWAY_HOST                    | 127.0.0.1          | address the HTTP server binds             |
| GATEWAY_PORT                    | 8080               | port the HTTP server binds (0 = any)      |
| GATEWAY_SCHEDULER               | 127.0.0.1:50051    | scheduler gRPC address; ip:port,ip:port = active + standby |
| GATEWAY_STORAGE                 | 127.0.0.1:50052    | gRPC address of storage                   |
| GATEWAY_MAX_REQUEST_BYTES       | 52428800 (50 MiB)  | size limit of one request body            |
| GATEWAY_SSE_KEEPALIVE_SECONDS   | 15                 | interval of SSE keep-alive comments       |
| GATEWAY_SSE_STALL_SECONDS       | 30                 | an SSE client that reads nothing this long is dropped |
| GATEWAY_SSE_BUFFER_FRAMES       | 256                | frames queued per SSE client before it is dropped |
| GATEWAY_RATE_LIMIT_REQUESTS     | 40                 | requests per token per window (0 = off)   |
| GATEWAY_RATE_LIMIT_WINDOW_SECONDS | 10               | the rate limit's sliding window           |
| GATEWAY_CREATE_BATCH            | 64                 | most concurrent creates of a token in one call (1 = off) |
| COMFYFLEET_LOG_FORMAT           | text               | log lines as `text` or `json` (one object per line) |
| GATEWAY_TLS_CERT_FILE           | (unset)            | PEM certificate (chain): serve HTTPS instead of HTTP |
| GATEWAY_TLS_KEY_FILE            | (unset)            | its private key (PEM); both or neither    |
| COMFYFLEET_SERVICE_TOKEN[_FILE] | (unset)            | shown to storage (services/common/service_auth.py) |
| COMFYFLEET_TLS_CERT_FILE, _KEY_FILE, _CA_FILE | (unset) | mTLS to scheduler and storage (services/common/tls.py) |
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from services.common.logs import LogFormat, parse_log_format
from services.common.service_auth import PLAIN, ServiceSecurity
from services.gateway.errors import InvalidSettings


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    """Everything the gateway is configured with."""

    host: str = "127.0.0.1"
    port: int = 8080
    scheduler_address: str = "127.0.0.1:50051"
    storage_address: str = "127.0.0.1:50052"
    max_request_bytes: int = 50 * 1024 * 1024
    sse_keepalive_seconds: float = 15.0
    sse_stall_seconds: float = 30.0
    sse_buffer_frames: int = 256
    rate_limit_requests: int = 40
    rate_limit_window_seconds: float = 10.0
    create_batch: int = 64
    log_format: LogFormat = "text"
    https_cert_file: str = ""  # both set: the listener is HTTPS (uvicorn's ssl_certfile/ssl_keyfile)
    https_key_file: str = ""
    security: ServiceSecurity = PLAIN

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> GatewaySettings:
        """Reads GATEWAY_* variables; raises InvalidSettings naming the bad one."""
        default = cls()
        return cls(
            host=_text(env, "GATEWAY_HOST", default.host),
            port=_integer(env, "GATEWAY_PORT", default.port, minimum=0, maximum=65535),
            scheduler_address=_text(env, "GATEWAY_SCHEDULER", default.scheduler_address),
            storage_address=_text(env, "GATEWAY_STORAGE", default.storage_address),
            max_request_bytes=_integer(env, "GATEWAY_MAX_REQUEST_BYTES", default.max_request_bytes, minimum=1),
            sse_keepalive_seconds=_seconds(env, "GATEWAY_SSE_KEEPALIVE_SECONDS", default.sse_keepalive_seconds),
            sse_stall_seconds=_seconds(env, "GATEWAY_SSE_STALL_SECONDS", default.sse_stall_seconds),
            sse_buffer_frames=_integer(env, "GATEWAY_SSE_BUFFER_FRAMES", default.sse_buffer_frames, minimum=1),
            rate_limit_requests=_integer(env, "GATEWAY_RATE_LIMIT_REQUESTS", default.rate_limit_requests, minimum=0),
            rate_limit_window_seconds=_seconds(env, "GATEWAY_RATE_LIMIT_WINDOW_SECONDS",
                                               default.rate_limit_window_seconds),
            create_batch=_integer(env, "GATEWAY_CREATE_BATCH", default.create_batch, minimum=1, maximum=256),
            log_format=_log_format(env),
            https_cert_file=_readable(env, "GATEWAY_TLS_CERT_FILE"),
            https_key_file=_readable(env, "GATEWAY_TLS_KEY_FILE"),
            security=_security(env),
        )

    def __post_init__(self) -> None:
        if bool(self.https_cert_file) != bool(self.https_key_file):
            raise InvalidSettings("GATEWAY_TLS_CERT_FILE and GATEWAY_TLS_KEY_FILE go together")

    @property
    def https(self) -> bool:
        return bool(self.https_cert_file)


def _security(env: Mapping[str, str]) -> ServiceSecurity:
    try:
        return ServiceSecurity.from_env(env)
    except ValueError as err:
        raise InvalidSettings(str(err)) from None


def _readable(env: Mapping[str, str], name: str) -> str:
    path = env.get(name, "").strip()
    if path and not os.access(path, os.R_OK):
        raise InvalidSettings(f"{name} names a file that cannot be read: {path!r}")
    return path


def _log_format(env: Mapping[str, str]) -> LogFormat:
    try:
        return parse_log_format(env.get("COMFYFLEET_LOG_FORMAT", ""))
    except ValueError as err:
        raise InvalidSettings(str(err)) from None


def _text(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name, "").strip()
    return value or default


def _integer(
    env: Mapping[str, str], name: str, default: int, *, minimum: int, maximum: int | None = None
) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidSettings(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum or (maximum is not None and value > maximum):
        bounds = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise InvalidSettings(f"{name} must be {bounds}, got {value}")
    return value


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise InvalidSettings(f"{name} must be a number of seconds, got {raw!r}") from None
    if not value > 0 or value == float("inf"):
        raise InvalidSettings(f"{name} must be a positive number of seconds, got {raw!r}")
    return value
