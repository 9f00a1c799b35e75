"""Settings of the storage service: one frozen object, read once from the environment in main.

    STORAGE_LISTEN                 127.0.0.1:50052         gRPC address to bind
    STORAGE_BACKEND                local                   where bytes live ("s3" comes later)
    STORAGE_LOCAL_DIR              ./var/objects           root of the local backend
    STORAGE_PUBLIC_URL             http://127.0.0.1:8080   the gateway's base URL (serves downloads)
    STORAGE_URL_SIGNING_KEY        (unset)                 HMAC key of download URLs, >= 32 chars
    STORAGE_URL_SIGNING_KEY_FILE   ./var/url-signing-key   used when the key is unset; created
                                                           with a random key (0600) if missing
    STORAGE_URL_TTL_SECONDS        300                     default lifetime of a download URL

Only this module reads os.environ-like mappings; it also reads (or creates) the key file,
once, at start, before the event loop runs.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, cast

from services.storage.errors import SettingsError

BackendKind = Literal["local"]
BACKENDS: tuple[BackendKind, ...] = ("local",)
PLANNED_BACKENDS = ("s3",)
MAX_URL_TTL_SECONDS = 7 * 24 * 3600
MIN_SIGNING_KEY_CHARS = 32


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
    )
    key_text = environ.get("STORAGE_URL_SIGNING_KEY", "")
    if not key_text:
        return dataclasses.replace(settings, url_signing_key=load_or_create_key(settings.url_signing_key_file))
    if len(key_text) < MIN_SIGNING_KEY_CHARS:
        raise SettingsError(f"STORAGE_URL_SIGNING_KEY must be at least {MIN_SIGNING_KEY_CHARS} characters")
    return dataclasses.replace(settings, url_signing_key=key_text.encode("utf-8"))


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


def _listen(value: str) -> str:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise SettingsError(f"STORAGE_LISTEN={value!r} must be host:port, e.g. 127.0.0.1:50052")
    return value


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
