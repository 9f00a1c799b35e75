"""The HTTP mapping of domain errors and gRPC statuses."""

from __future__ import annotations

import grpc
import pytest

from services.common.errors import (
    ComfyfleetError,
    Conflict,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    TooLarge,
    Unauthenticated,
    Unavailable,
    grpc_status_for,
)
from services.gateway.errors import OutcomeUnknown, error_body, from_grpc, http_status_for


def rpc_error(code: grpc.StatusCode, details: str, cause: ComfyfleetError | None = None) -> grpc.aio.AioRpcError:
    trailing = grpc.aio.Metadata(*grpc_status_for(cause).trailing_metadata) if cause else grpc.aio.Metadata()
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, details=details)


@pytest.mark.parametrize(
    ("err", "status"),
    [(InvalidArgument("x"), 400), (Unauthenticated("x"), 401), (PermissionDenied("x"), 403), (NotFound("x"), 404),
     (Conflict("x"), 409), (TooLarge("x"), 413), (Unavailable("x"), 503), (OutcomeUnknown("x"), 503),
     (ComfyfleetError("x"), 500)],
)
def test_http_status_of_each_domain_error(err: ComfyfleetError, status: int) -> None:
    assert http_status_for(err) == status


def test_the_servers_reason_and_details_survive() -> None:
    cause = NotFound("workflow not found", reason="WORKFLOW_NOT_FOUND", details=[{"id": "w"}])
    err = from_grpc(rpc_error(grpc.StatusCode.NOT_FOUND, "workflow not found", cause), "scheduler")
    assert isinstance(err, NotFound)
    assert (err.message, err.reason, err.details) == ("workflow not found", "WORKFLOW_NOT_FOUND", [{"id": "w"}])


def test_transport_failures_name_the_service_not_the_address() -> None:
    err = from_grpc(rpc_error(grpc.StatusCode.UNAVAILABLE, "failed to connect to 10.0.0.7:50051"), "storage")
    assert isinstance(err, Unavailable) and err.message == "storage is unavailable"
    err = from_grpc(rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"), "scheduler")
    assert isinstance(err, OutcomeUnknown) and err.message == "scheduler did not answer in time"


@pytest.mark.parametrize(
    ("code", "kind"),
    [(grpc.StatusCode.ALREADY_EXISTS, Conflict), (grpc.StatusCode.ABORTED, Conflict),
     (grpc.StatusCode.OUT_OF_RANGE, InvalidArgument), (grpc.StatusCode.CANCELLED, Unavailable)],
)
def test_other_codes_map_to_the_nearest_error(code: grpc.StatusCode, kind: type[ComfyfleetError]) -> None:
    assert type(from_grpc(rpc_error(code, "x"), "scheduler")) is kind


def test_error_body_has_details_only_when_there_are_some() -> None:
    assert error_body(404, "m", "R") == {"status": 404, "message": "m", "reason": "R"}
    assert error_body(400, "m", "R", [{"field": "f"}])["details"] == [{"field": "f"}]
