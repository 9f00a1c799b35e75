"""Where the API is and how to call it: `Settings`, from arguments, the environment or a file.

Precedence, highest first: explicit arguments, `COMFYFLEET_URL` / `COMFYFLEET_TOKEN` /
`COMFYFLEET_TIMEOUT`, then the config file: `$COMFYFLEET_CONFIG`, else
`$XDG_CONFIG_HOME/comfyfleet/config.toml` (default `~/.config/comfyfleet/config.toml`):

    url = "http://127.0.0.1:8080"
    token = "cf_..."
    timeout = 30          # seconds, per request (a watch waits without limit between events)

    >>> Settings.load(url="http://127.0.0.1:8080", token="cf_...").url
    'http://127.0.0.1:8080'
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8080"


class SettingsError(ValueError):
    """The config file or an environment variable has a value the SDK cannot use."""


def config_path(env: Mapping[str, str] | None = None) -> Path:
    """The config file this environment points at (it need not exist)."""
    env = os.environ if env is None else env
    if env.get("COMFYFLEET_CONFIG"):
        return Path(env["COMFYFLEET_CONFIG"]).expanduser()
    base = Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else Path.home() / ".config"
    return base / "comfyfleet" / "config.toml"


@dataclass(frozen=True)
class Settings:
    """How to reach the API.

    `max_retries`: how many times a 429/503 (or a refused connection) is retried.
    `max_retry_wait`: the longest Retry-After honoured; a longer one is raised at once.
    """

    url: str = DEFAULT_URL
    token: str | None = None
    timeout: float = 30.0
    max_retries: int = 3
    max_retry_wait: float = 30.0

    @classmethod
    def load(cls, url: str | None = None, token: str | None = None, timeout: float | None = None,
             env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Arguments over the environment over the config file over the defaults."""
        env = os.environ if env is None else env
        file = _read_file(config_path(env))
        timeout_raw = timeout if timeout is not None else env.get("COMFYFLEET_TIMEOUT") or file.get("timeout")
        try:
            resolved_timeout = float(timeout_raw) if timeout_raw not in (None, "") else cls.timeout
        except (TypeError, ValueError):
            raise SettingsError(f"timeout must be a number of seconds, not {timeout_raw!r}") from None
        return cls(
            url=(url or env.get("COMFYFLEET_URL") or str(file.get("url") or "") or DEFAULT_URL).rstrip("/"),
            token=token or env.get("COMFYFLEET_TOKEN") or (str(file["token"]) if file.get("token") else None),
            timeout=resolved_timeout,
            **overrides,
        )


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as err:
        raise SettingsError(f"cannot read {path}: {err.strerror}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise SettingsError(f"{path} is not valid TOML: {err}") from None
