"""The fields of a runner registered through the API: rules and masking. Pure: no I/O.

    name      1 to 100 characters (spaces around it are dropped)
    endpoint  an http or https URL with a host, at most 2048 characters
    headers   at most 32; names are HTTP tokens, values printable text without line breaks
    tags      as a workflow's tags (core.graph.normalise_tags): at most 10

Header values are secrets (tokens, passwords): every response shows them masked, keeping
only a leading scheme word: "Bearer abc" -> "Bearer ****", "abc" -> "****".
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import urlsplit

from services.scheduler.core.graph import normalise_tags
from services.scheduler.errors import InvalidArgument

MAX_NAME = 100
MAX_ENDPOINT = 2048
MAX_HEADERS = 32
MAX_HEADER_VALUE = 8192
MASK = "****"
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}")
_SCHEME_WORD = re.compile(r"^([A-Za-z][A-Za-z0-9_-]{0,31}) +\S")
STATUSES = ("active", "disabled")


def _bad(message: str, field: str, reason: str) -> InvalidArgument:
    return InvalidArgument(message, reason=reason, details=[{"field": field}])


def check_name(raw: str) -> str:
    name = raw.strip()
    if not name:
        raise _bad("name cannot be empty", "name", "INVALID_NAME")
    if len(name) > MAX_NAME:
        raise _bad(f"name must be at most {MAX_NAME} characters", "name", "INVALID_NAME")
    return name


def check_endpoint(raw: str) -> str:
    endpoint = raw.strip()
    try:
        parts = urlsplit(endpoint)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        _ = parts.port  # raises ValueError for a port that is not a number in range
    except ValueError:  # a bad port or a malformed IPv6 host
        ok = False
    if not ok or len(endpoint) > MAX_ENDPOINT or any(c.isspace() or not c.isprintable() for c in endpoint):
        raise _bad("invalid endpoint URL format", "endpoint", "INVALID_ENDPOINT")
    return endpoint


def check_headers(headers: Mapping[str, str]) -> dict[str, str]:
    if len(headers) > MAX_HEADERS:
        raise _bad(f"invalid headers format: at most {MAX_HEADERS} headers", "headers", "INVALID_HEADERS")
    for name, value in headers.items():
        if not _HEADER_NAME.fullmatch(name):
            raise _bad(f"invalid headers format: {name!r} is not a header name", "headers", "INVALID_HEADERS")
        if len(value) > MAX_HEADER_VALUE or not value.isprintable():
            raise _bad(f"invalid headers format: the value of {name!r} must be printable text on one line",
                       "headers", "INVALID_HEADERS")
    return dict(headers)


def check_tags(tags: list[str]) -> list[str]:
    return normalise_tags(tags)


def mask(value: str) -> str:
    """A header value as responses show it."""
    if m := _SCHEME_WORD.match(value):
        return f"{m.group(1)} {MASK}"
    return MASK


def masked(headers: Mapping[str, str]) -> dict[str, str]:
    return {name: mask(value) for name, value in headers.items()}
