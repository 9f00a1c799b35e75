"""What every CLI command shares: exit codes, the client from flags/env/config, `--json`,
`key=value` parsing, and turning SDK errors into a message and an exit code.

Exit codes (also in `comfyfleet --help`):

    0  done; for run --watch / watch: the workflow completed
    1  the workflow failed, or the API or the network answered with an error
    2  usage error: bad arguments, a missing file, no URL/token configured
    3  the workflow was cancelled
    4  the workflow was invalid (ComfyUI rejected the graph)
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Any, NoReturn

import typer
from pydantic import BaseModel
from rich.console import Console

from comfyfleet.client import Client
from comfyfleet.errors import APIError, ComfyfleetError
from comfyfleet.settings import Settings, SettingsError, config_path

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CANCELLED, EXIT_INVALID = 0, 1, 2, 3, 4
EXIT_BY_STATUS = {"completed": EXIT_OK, "failed": EXIT_FAILED, "cancelled": EXIT_CANCELLED, "invalid": EXIT_INVALID}

EXIT_CODES_HELP = (
    "Exit codes: 0 done (workflow completed), 1 workflow failed or API/network error, "
    "2 usage error, 3 workflow cancelled, 4 workflow invalid."
)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON (one object, or one per line for streams).")]


@dataclass
class Options:
    """Global flags, kept on the typer context."""

    url: str | None = None
    token: str | None = None
    timeout: float | None = None
    json: bool = False


def options(ctx: typer.Context) -> Options:
    obj = ctx.find_root().obj
    return obj if isinstance(obj, Options) else Options()


def wants_json(ctx: typer.Context, flag: bool) -> bool:
    return flag or options(ctx).json


out = Console(soft_wrap=True, highlight=False)
err = Console(stderr=True, soft_wrap=True, highlight=False)


def usage_error(message: str) -> NoReturn:
    err.print(f"[red]error:[/red] {message}")
    raise typer.Exit(EXIT_USAGE)


@contextmanager
def client_for(ctx: typer.Context) -> Iterator[Client]:
    """A Client from --url/--token, COMFYFLEET_URL/COMFYFLEET_TOKEN, or the config file."""
    opts = options(ctx)
    try:
        settings = Settings.load(url=opts.url, token=opts.token, timeout=opts.timeout)
    except SettingsError as error:
        usage_error(str(error))
    if not settings.token:
        usage_error(f"no API token: pass --token, set COMFYFLEET_TOKEN, or put token = \"...\" in {config_path()}")
    with Client(settings=settings) as client:
        yield client


def api_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator: SDK errors become a message on stderr (and the body as JSON) and exit 1."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except APIError as error:
            err.print(f"[red]error:[/red] {error.status} {error.reason}: {error.message}".replace(" :", ":"))
            for detail in error.details:
                err.print(f"  - {json.dumps(detail) if not isinstance(detail, str) else detail}")
            ctx = next((a for a in args if isinstance(a, typer.Context)), kwargs.get("ctx"))
            if ctx is not None and wants_json(ctx, bool(kwargs.get("as_json"))):
                print_json({"error": error.body if isinstance(error.body, dict) else {
                    "status": error.status, "message": error.message, "reason": error.reason}})
            raise typer.Exit(EXIT_FAILED) from None
        except FileNotFoundError as error:
            usage_error(str(error))
        except ComfyfleetError as error:
            err.print(f"[red]error:[/red] {error}")
            raise typer.Exit(EXIT_FAILED) from None

    return wrapper


def to_json(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", by_alias=False)
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    return value


def print_json(value: Any, *, compact: bool = False) -> None:
    text = json.dumps(to_json(value), separators=(",", ":")) if compact else json.dumps(to_json(value), indent=2)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def pairs(values: Iterable[str] | None, flag: str) -> dict[str, str]:
    """`["prompt=a cat", "steps=20"]` -> `{"prompt": "a cat", "steps": "20"}`."""
    found: dict[str, str] = {}
    for value in values or []:
        key, sep, rest = value.partition("=")
        if not sep or not key:
            usage_error(f"{flag} takes NAME=VALUE, not {value!r}")
        found[key] = rest
    return found


def split_tags(values: Iterable[str] | None) -> list[str]:
    """`--tags gpu,fast --tags big` -> `["gpu", "fast", "big"]`."""
    return [tag.strip() for value in values or [] for tag in value.split(",") if tag.strip()]
