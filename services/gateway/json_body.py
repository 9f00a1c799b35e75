"""JSON request bodies: read within a size limit, parse to an object, check field types.

Every problem is a 400 naming the field (413 when the body is over the limit); a route
states which fields it takes and the rest are refused, so a typo is not silently ignored.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from starlette.requests import Request

from services.gateway.errors import InvalidArgument, TooLarge
from services.gateway.multipart import describe_size

MAX_JSON_BODY_BYTES = 256 * 1024


async def read_object(request: Request, allowed: Iterable[str], *, optional_body: bool = False) -> dict[str, Any]:
    """The body as a JSON object with only `allowed` keys; {} for an empty body when `optional_body`."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_JSON_BODY_BYTES:
            raise TooLarge(f"the request is over the limit of {describe_size(MAX_JSON_BODY_BYTES)}",
                           reason="REQUEST_TOO_LARGE", details=[{"limit_bytes": MAX_JSON_BODY_BYTES}])
    if not body.strip() and optional_body:
        return {}
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested too deeply
        raise InvalidArgument("the request body is not valid JSON", reason="INVALID_JSON") from None
    if not isinstance(value, dict):
        raise InvalidArgument("the request body must be a JSON object", reason="INVALID_JSON")
    allowed = list(allowed)
    for key in value:
        if key not in allowed:
            raise InvalidArgument(f"unknown field {key!r}: expected {', '.join(allowed)}", reason="UNKNOWN_FIELD",
                                  details=[{"field": key}])
    return value


def _bad_type(field: str, what: str) -> InvalidArgument:
    return InvalidArgument(f"{field} must be {what}", reason="INVALID_FIELD", details=[{"field": field}])


def text(body: dict[str, Any], field: str) -> str:
    value = body[field]
    if not isinstance(value, str):
        raise _bad_type(field, "a string")
    return value


def text_list(body: dict[str, Any], field: str) -> list[str]:
    value = body[field]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _bad_type(field, "an array of strings")
    return value


def text_map(body: dict[str, Any], field: str) -> dict[str, str]:
    value = body[field]
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise InvalidArgument("invalid headers format: an object of header name -> string value"
                              if field == "headers" else f"{field} must be an object of strings",
                              reason="INVALID_FIELD", details=[{"field": field}])
    return value


def integer(body: dict[str, Any], field: str) -> int:
    value = body[field]
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad_type(field, "an integer")
    return value
