"""Settings of the storage service: one frozen object, read once from the environment in main.

    STORAGE_LISTEN                 127.0.0.1:50052         gRPC address to bind
    STORAGE_BACKEND                local                   where bytes live ("s3" comes later)
    STORAGE_LOCAL_DIR              ./var/objects           root of the local backend
    STORAGE_PUBLIC_URL             http://127.0.0.1:8080   the gateway's base URL (serves downloads)
    STORAGE_URL_SIGNING_KEY        (unset)                 HMAC key of download URLs, >= 32 chars
    STORAGE_URL_SIGNING_KEY_FILE   ./var/url-signing-key   used when the key is unset; created
                                                           with a random key (0600) if missing
    STORAGE_URL_TTL_SECONDS        300                     default lifetime of a download URL
    STORAGE_S3_ENDPOINT            (required for s3)       host:port of the S3 API, e.g. minio:9000
    STORAGE_S3_ACCESS_KEY          (required for s3)
    STORAGE_S3_SECRET_KEY          (required for s3)
    STORAGE_S3_BUCKET              comfyfleet              created at start when missing
    STORAGE_S3_SECURE              false                   https to the S3 API
    STORAGE_S3_REGION              us-east-1
    STORAGE_S3_PUBLIC_ENDPOINT     (the endpoint)          host:port that presigned URLs name, when
                                                           clients reach S3 by another address
    STORAGE_S3_PUBLIC_SECURE       (STORAGE_S3_SECURE)     https in presigned URLs
    STORAGE_S3_PART_SIZE_MIB       8                       multipart part size (5..512)
    STORAGE_S3_PARALLEL_PARTS      2                       parts of one upload sent at once (1..8);
                                                           an upload holds about (this + 1) parts
    STORAGE_METRICS_PORT           9462                    GET /metrics over HTTP on the host of
                                                           STORAGE_LISTEN (0 = off)
    COMFYFLEET_LOG_FORMAT          text                    log lines as "text" or "json"
    COMFYFLEET_SERVICE_TOKEN[_FILE] (required to serve)    every call must carry it (service_auth.py)
    COMFYFLEET_TLS_CERT_FILE/KEY_FILE/CA_FILE (unset)      mTLS on the gRPC port (services/common/tls.py)

Only this module reads os.environ-like mappings; it also reads (or creates) the key file,
once, at start, before the event loop runs.
"""

from __future__ import annotations

import dataclasses
import os
import re
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, cast

from services.common.logs import LogFormat, parse_log_format
from services.common.service_auth import PLAIN, ServiceSecurity
from services.storage.errors import SettingsError

BackendKind = Literal["local", "s3"]
BACKENDS: tuple[BackendKind, ...] = ("local", "s3")
PLANNED_BACKENDS: tuple[str, ...] = ()
MAX_URL_TTL_SECONDS = 7 * 24 * 3600
MIN_SIGNING_KEY_CHARS = 32


@dataclasses.dataclass(frozen=True)
class S3Settings:
    """Where the `s3` backend keeps objects."""

    endpoint: str
    access_key: str = dataclasses.field(repr=False)
    secret_key: str = dataclasses.field(repr=False)
    bucket: str = "comfyfleet"
    secure: bool = False
    region: str = "us-east-1"
    public_endpoint: str = ""  # "" = the endpoint
    public_secure: bool | None = None  # None = secure
    part_size_bytes: int = 8 * 1024 * 1024
    parallel_parts: int = 2


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything the storage service is configured with."""

    listen: str = "127.0.0.1:50052"
    backend: BackendKind = "local"
    local_dir: Path = Path("./var/objects")
    public_url: str = "http://127.0.0.1:8080"
    url_signing_key: bytes = dataclasses.field(default=b"", repr=False)
    url_signing_key_file: Path = Path("./var/url-signing-key")
    url_ttl_seconds: int = 300
    s3: S3Settings | None = None  # set when backend == "s3"
    metrics_port: int = 9462
    log_format: LogFormat = "text"
    security: ServiceSecurity = PLAIN


def load_settings(environ: Mapping[str, str]) -> Settings:
    """Settings from `environ` (os.environ in main); raises SettingsError with a clear message."""
    defaults = Settings()
    settings = Settings(
        listen=_listen(environ.get("STORAGE_LISTEN") or defaults.listen),
        backend=_backend(environ.get("STORAGE_BACKEND") or defaults.backend),
        local_dir=Path(environ.get("STORAGE_LOCAL_DIR") or defaults.local_dir),
        public_url=_public_url(environ.get("STORAGE_PUBLIC_URL") or defaults.public_url),
        url_signing_key_file=Path(environ.get("STORAGE_URL_SIGNING_KEY_FILE") or defaults.url_signing_key_file),
        url_ttl_seconds=_ttl(environ.get("STORAGE_URL_TTL_SECONDS") or str(defaults.url_ttl_seconds)),
        metrics_port=_port("STORAGE_METRICS_PORT", environ.get("STORAGE_METRICS_PORT") or str(defaults.metrics_port)),
        log_format=_log_format(environ.get("COMFYFLEET_LOG_FORMAT") or defaults.log_format),
        security=_security(environ),
    )
    if settings.backend == "s3":
        settings = dataclasses.replace(settings, s3=_s3(environ))
    key_text = environ.get("STORAGE_URL_SIGNING_KEY", "")
    if not key_text:
        return dataclasses.replace(settings, url_signing_key=load_or_create_key(settings.url_signing_key_file))
    if len(key_text) < MIN_SIGNING_KEY_CHARS:
        raise SettingsError(f"STORAGE_URL_SIGNING_KEY must be at least {MIN_SIGNING_KEY_CHARS} characters")
    return dataclasses.replace(settings, url_signing_key=key_text.encode("utf-8"))


def _security(environ: Mapping[str, str]) -> ServiceSecurity:
    try:
        return ServiceSecurity.from_env(environ)
    except ValueError as err:
        raise SettingsError(str(err)) from None


def load_or_create_key(path: Path) -> bytes:
    """The key stored in `path`; a new random one (file mode 0600) when the file is missing.

    Creation is atomic (temp file + hard link), so two services starting together agree on
    one key, and restarts keep earlier download URLs valid.
    """
    try:
        return _read_key(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as file:
            file.write(secrets.token_hex(32) + "\n")
            file.flush()
            os.fsync(file.fileno())
        try:
            os.link(temp, path)
        except FileExistsError:
            pass  # another process made it first: use theirs
    finally:
        temp.unlink(missing_ok=True)
    return _read_key(path)


def _read_key(path: Path) -> bytes:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError) as err:
        raise SettingsError(f"cannot read the URL signing key file {path}: {err}") from err
    if len(text) < MIN_SIGNING_KEY_CHARS:
        raise SettingsError(
            f"the URL signing key file {path} holds fewer than {MIN_SIGNING_KEY_CHARS} characters; "
            "delete it to have a new key made"
        )
    return text.encode("utf-8")


def _backend(value: str) -> BackendKind:
    if value in BACKENDS:
        return cast(BackendKind, value)
    supported = ", ".join(BACKENDS)
    if value in PLANNED_BACKENDS:
        raise SettingsError(f"STORAGE_BACKEND={value!r} is not available yet; supported: {supported}")
    raise SettingsError(f"STORAGE_BACKEND={value!r} is unknown; supported: {supported}")


def _s3(environ: Mapping[str, str]) -> S3Settings:
    missing = [name for name in ("STORAGE_S3_ENDPOINT", "STORAGE_S3_ACCESS_KEY", "STORAGE_S3_SECRET_KEY")
               if not environ.get(name)]
    if missing:
        raise SettingsError(f"STORAGE_BACKEND=s3 needs {', '.join(missing)}")
    bucket = environ.get("STORAGE_S3_BUCKET") or "comfyfleet"
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket) or ".." in bucket:
        raise SettingsError(f"STORAGE_S3_BUCKET={bucket!r} is not a valid bucket name (3-63 of a-z 0-9 . -)")
    part_mib = environ.get("STORAGE_S3_PART_SIZE_MIB") or "8"
    if not part_mib.isdigit() or not 5 <= int(part_mib) <= 512:
        raise SettingsError(f"STORAGE_S3_PART_SIZE_MIB={part_mib!r} must be a whole number in 5..512")
    parallel_text = environ.get("STORAGE_S3_PARALLEL_PARTS") or "2"
    if not parallel_text.isdigit() or not 1 <= int(parallel_text) <= 8:
        raise SettingsError(f"STORAGE_S3_PARALLEL_PARTS={parallel_text!r} must be a whole number in 1..8")
    parallel = int(parallel_text)
    secure = _bool("STORAGE_S3_SECURE", environ.get("STORAGE_S3_SECURE") or "false")
    public_secure = environ.get("STORAGE_S3_PUBLIC_SECURE")
    return S3Settings(
        endpoint=_endpoint("STORAGE_S3_ENDPOINT", environ["STORAGE_S3_ENDPOINT"]),
        access_key=environ["STORAGE_S3_ACCESS_KEY"],
        secret_key=environ["STORAGE_S3_SECRET_KEY"],
        bucket=bucket,
        secure=secure,
        region=environ.get("STORAGE_S3_REGION") or "us-east-1",
        public_endpoint=_endpoint("STORAGE_S3_PUBLIC_ENDPOINT", environ.get("STORAGE_S3_PUBLIC_ENDPOINT") or "")
        if environ.get("STORAGE_S3_PUBLIC_ENDPOINT") else "",
        public_secure=_bool("STORAGE_S3_PUBLIC_SECURE", public_secure) if public_secure else None,
        part_size_bytes=int(part_mib) * 1024 * 1024,
        parallel_parts=parallel,
    )


def _endpoint(name: str, value: str) -> str:
    host, _, port = value.rpartition(":")
    if "/" in value or (port and not port.isdigit() and host) or not value:
        raise SettingsError(f"{name}={value!r} must be host or host:port, without a scheme or path")
    return value


def _bool(name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name}={value!r} must be true or false")


def _listen(value: str) -> str:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise SettingsError(f"STORAGE_LISTEN={value!r} must be host:port, e.g. 127.0.0.1:50052")
    return value


def _port(name: str, value: str) -> int:
    if not value.isdigit() or not 0 <= int(value) <= 65535:
        raise SettingsError(f"{name}={value!r} must be a port number (0 = off)")
    return int(value)


def _log_format(value: str) -> LogFormat:
    try:
        return parse_log_format(value)
    except ValueError as err:
        raise SettingsError(str(err)) from None


def _public_url(value: str) -> str:
    if not value.startswith(("http://", "https://")) or "?" in value or "#" in value:
        raise SettingsError(f"STORAGE_PUBLIC_URL={value!r} must be an http(s) base URL without query")
    return value.rstrip("/")


def _ttl(value: str) -> int:
    try:
        seconds = int(value)
    except ValueError:
        seconds = 0
    if not 0 < seconds <= MAX_URL_TTL_SECONDS:
        raise SettingsError(
            f"STORAGE_URL_TTL_SECONDS={value!r} must be a whole number of seconds in 1..{MAX_URL_TTL_SECONDS}"
        )
    return seconds
