"""The error tree shared by every service, and its mapping to gRPC statuses.

    ComfyfleetError                 base; never raised itself
    ├── InvalidArgument             bad input           -> INVALID_ARGUMENT  (HTTP 400)
    ├── Unauthenticated             no or bad token      -> UNAUTHENTICATED   (HTTP 401)
    ├── PermissionDenied            tier limit, not allowed -> PERMISSION_DENIED (HTTP 403)
    ├── NotFound                    absent or not yours  -> NOT_FOUND         (HTTP 404)
    ├── Conflict                    wrong state          -> FAILED_PRECONDITION (HTTP 409)
    ├── TooLarge                    over a size limit    -> RESOURCE_EXHAUSTED (HTTP 413)
    └── Unavailable                 a dependency is down -> UNAVAILABLE       (HTTP 503)

Each error carries a stable machine `reason` (e.g. "WORKFLOW_NOT_FOUND") and optional
`details` (a list of JSON-able dicts). Servers raise these; `grpc_status_for` turns one into
a rich gRPC status with a `google.rpc.ErrorInfo`; clients rebuild it with `from_rpc_error`.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

DOMAIN = "comfyfleet"
_DETAILS_KEY = "details_json"


class ComfyfleetError(Exception):
    """Base of every domain error."""

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL
    default_reason: ClassVar[str] = "INTERNAL"

    def __init__(
        self, message: str, *, reason: str | None = None, details: list[dict[str, Any]] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.details = details or []


class InvalidArgument(ComfyfleetError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"


class Unauthenticated(ComfyfleetError):
    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"


class PermissionDenied(ComfyfleetError):
    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"


class NotFound(ComfyfleetError):
    code = grpc.StatusCode.NOT_FOUND
    default_reason = "NOT_FOUND"


class Conflict(ComfyfleetError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = "CONFLICT"


class TooLarge(ComfyfleetError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "TOO_LARGE"


class Unavailable(ComfyfleetError):
    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "UNAVAILABLE"


_BY_CODE: dict[grpc.StatusCode, type[ComfyfleetError]] = {
    cls.code: cls
    for cls in (InvalidArgument, Unauthenticated, PermissionDenied, NotFound, Conflict, TooLarge, Unavailable)
}


def status_proto_for(err: ComfyfleetError) -> status_pb2.Status:
    """The google.rpc.Status of `err`: code, message, ErrorInfo with reason and details."""
    info = error_details_pb2.ErrorInfo(reason=err.reason, domain=DOMAIN)
    if err.details:
        info.metadata[_DETAILS_KEY] = json.dumps(err.details)
    detail = any_pb2.Any()
    detail.Pack(info)
    return status_pb2.Status(code=err.code.value[0], message=err.message, details=[detail])


def grpc_status_for(err: ComfyfleetError) -> grpc.Status:
    """A rich status (code, message, ErrorInfo with reason and details) for `err`."""
    return rpc_status.to_status(status_proto_for(err))


async def abort(context: grpc.aio.ServicerContext[Any, Any], err: ComfyfleetError) -> None:
    """Ends the call with the rich status of `err` (raises, like context.abort)."""
    await context.abort_with_status(grpc_status_for(err))


def from_rpc_error(err: grpc.aio.AioRpcError) -> ComfyfleetError:
    """Rebuilds the domain error a server raised; unknown codes become Unavailable/ComfyfleetError."""
    status: status_pb2.Status | None = None
    for key, value in err.trailing_metadata() or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
    return _domain_error(err.code(), err.details() or err.code().name.lower(), status)


def from_status_bytes(data: bytes) -> ComfyfleetError:
    """Rebuilds the domain error of a serialized google.rpc.Status (as status_proto_for makes)."""
    status = status_pb2.Status.FromString(data)
    code = next((c for c in grpc.StatusCode if c.value[0] == status.code), grpc.StatusCode.UNKNOWN)
    return _domain_error(code, status.message or code.name.lower(), status)


def _domain_error(code: grpc.StatusCode, message: str, status: status_pb2.Status | None) -> ComfyfleetError:
    reason: str | None = None
    details: list[dict[str, Any]] = []
    for packed in status.details if status is not None else ():
        info = error_details_pb2.ErrorInfo()
        if packed.Unpack(info):
            reason = info.reason
            if _DETAILS_KEY in info.metadata:
                details = json.loads(info.metadata[_DETAILS_KEY])
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) and reason is None:
        return Unavailable(message, reason="UNAVAILABLE")
    cls = _BY_CODE.get(code, ComfyfleetError)
    return cls(message, reason=reason, details=details)
