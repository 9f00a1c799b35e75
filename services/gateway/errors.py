"""The one place where errors become HTTP: domain errors and gRPC statuses -> the public body.

Every error response has the shape of API.md:
`{"status": 404, "message": "workflow not found", "reason": "NOT_FOUND", "details": [...]}`
(`details` only when there are some).

    ComfyfleetError (services.common.errors)  -> by its gRPC code:
        InvalidArgument   400      Unauthenticated 401 (+ WWW-Authenticate)
        PermissionDenied  403      NotFound        404
        Conflict          409      TooLarge        413
        Unavailable       503 (+ Retry-After)
            └── OutcomeUnknown     503; the call may have taken effect (deadline passed)
        anything else     500, logged, message hidden
    starlette HTTPException (unknown route, wrong method) -> its status, same body
    any other exception -> 500, same body, logged (the gateway's edge, edge.py)

InvalidSettings is raised at start-up only, for a bad GATEWAY_* variable.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from services.common.errors import (
    ComfyfleetError,
    Conflict,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    TooLarge,
    Unauthenticated,
    Unavailable,
    from_rpc_error,
)

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5

_HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 413,
    grpc.StatusCode.UNAVAILABLE: 503,
}

_HTTP_REASONS = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}


class InvalidSettings(ValueError):
    """A GATEWAY_* environment variable has a value the gateway cannot use."""


class OutcomeUnknown(Unavailable):
    """The deadline passed: the call failed for us, but may have taken effect upstream."""

    default_reason = "DEADLINE_EXCEEDED"


def from_grpc(err: grpc.aio.AioRpcError, service: str) -> ComfyfleetError:
    """The domain error for a failed call to `service`, keeping the server's reason and details.

    Transport failures (no reason from the server) get a message naming the service instead
    of gRPC's, which would show internal addresses.
    """
    code = err.code()
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return OutcomeUnknown(f"{service} did not answer in time")
    if code == grpc.StatusCode.CANCELLED:
        return Unavailable(f"the call to {service} was cancelled", reason="CANCELLED")
    domain = from_rpc_error(err)
    if isinstance(domain, Unavailable) and domain.reason == "UNAVAILABLE":
        return Unavailable(f"{service} is unavailable", reason="UNAVAILABLE")
    retyped: type[ComfyfleetError] | None = {
        grpc.StatusCode.ALREADY_EXISTS: Conflict,
        grpc.StatusCode.ABORTED: Conflict,
        grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    }.get(code)
    if retyped is not None:
        return retyped(domain.message, reason=domain.reason if domain.reason != "INTERNAL" else None,
                       details=domain.details)
    return domain


def http_status_for(err: ComfyfleetError) -> int:
    """400/401/403/404/409/413/503 for the known errors, 500 for the rest."""
    return _HTTP_STATUS.get(err.code, 500)


def error_body(status: int, message: str, reason: str, details: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The public error body."""
    body: dict[str, Any] = {"status": status, "message": message, "reason": reason}
    if details:
        body["details"] = details
    return body


def error_response(err: ComfyfleetError) -> JSONResponse:
    """The HTTP response for a domain error (500s are logged and their message hidden)."""
    status = http_status_for(err)
    headers: dict[str, str] = {}
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    elif status == 503:
        headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    if status == 500:
        log.error("upstream failure: %s (%s)", err.message, err.reason)
        return JSONResponse(error_body(500, "internal error", err.reason), status_code=500)
    return JSONResponse(error_body(status, err.message, err.reason, err.details), status_code=status,
                        headers=headers)


async def handle_domain_error(request: Request, exc: Exception) -> Response:
    """Starlette exception handler for ComfyfleetError."""
    assert isinstance(exc, ComfyfleetError)
    return error_response(exc)


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    """Starlette exception handler for routing errors (404 unknown path, 405 wrong method)."""
    assert isinstance(exc, HTTPException)
    reason = _HTTP_REASONS.get(exc.status_code, "HTTP_ERROR")
    return JSONResponse(
        error_body(exc.status_code, str(exc.detail).lower(), reason),
        status_code=exc.status_code,
        headers=exc.headers,
    )


__all__ = [
    "ComfyfleetError",
    "Conflict",
    "InvalidArgument",
    "InvalidSettings",
    "NotFound",
    "OutcomeUnknown",
    "PermissionDenied",
    "TooLarge",
    "Unauthenticated",
    "Unavailable",
    "error_body",
    "error_response",
    "from_grpc",
    "handle_domain_error",
    "handle_http_exception",
    "http_status_for",
]
