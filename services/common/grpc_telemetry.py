"""What every gRPC server records about each call: latency by method and status code, the
caller's request id, and one log line.

    comfyfleet_grpc_server_handling_seconds{grpc_service, grpc_method, grpc_code}
        time from the call's arrival to its status; for streams, the stream's whole life;
        for an item of a call that carries several (grpc_method "<Method>.item": CreateWorkflows'
        items, PutObjectsBytes' items), the item's own time

`ServerTelemetry` is one grpc.aio server interceptor (grpc_server.serve and the scheduler's
standby server register it). For each call it binds `x-request-id` from the metadata (a new
id when the caller sent none or an unusable one) in the logging context (logs.py), and the
`workflow_id` a unary request names; when the call ends it logs one line: method, code, time,
and the workflow id of a response that carries a workflow (CreateWorkflow's, say).
Health checks and reflection pass through untouched. `outgoing_metadata` is what a client
adds to its calls to carry the current request id on. A call that carries several requests
(CreateWorkflows, the PutObjectsBytes stream) logs and times each item as its own call would
have been (`log_item`), with the item's request id.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from prometheus_client import Histogram

from services.common import logs

log = logging.getLogger("services.grpc")

REQUEST_ID_KEY = "x-request-id"
_USABLE_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")
_UNTOUCHED = ("/grpc.health.v1.Health/", "/grpc.reflection.")
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

HANDLING_SECONDS = Histogram(
    "comfyfleet_grpc_server_handling_seconds",
    "Time from a gRPC call's arrival to its status (for streams, the stream's life)",
    ["grpc_service", "grpc_method", "grpc_code"],
    buckets=BUCKETS,
)


def new_request_id() -> str:
    """32 random hex digits, as uuid4().hex without its version bits (0.6 us here, uuid4 4.7 us)."""
    return os.urandom(16).hex()


def usable_request_id(value: str | None) -> str:
    """`value` when it is a sane id (at most 128 URL-safe characters), else a new one."""
    return value if value and _USABLE_ID.fullmatch(value) else new_request_id()


ITEM_SUFFIX = ".item"


def log_item(method: str, error: BaseException | None, seconds: float, *, request_id: str,
             workflow_id: str = "") -> None:
    """The log line and the latency of one request carried in a call of several, as its own
    call would record them; timed under grpc_method "<Method>.item" (the call's own sample,
    at its end, is the whole call's or stream's)."""
    code = getattr(getattr(error, "code", None), "name", "UNKNOWN") if error is not None else "OK"
    service, _, name = method.lstrip("/").rpartition("/")
    HANDLING_SECONDS.labels(service, name + ITEM_SUFFIX, code).observe(seconds)
    level = logging.WARNING if code in ("UNKNOWN", "INTERNAL", "DATA_LOSS") else logging.INFO
    log.log(level, "%s %s %.1f ms (batched)", method, code, seconds * 1000,
            extra={"request_id": usable_request_id(request_id), "workflow_id": workflow_id})


def outgoing_metadata() -> tuple[tuple[str, str], ...]:
    """The metadata that carries the current request id to the next service (empty if none)."""
    current = logs.request_id.get()
    return ((REQUEST_ID_KEY, current),) if current else ()


def _code_name(context: Any, error: BaseException | None) -> str:
    if isinstance(error, asyncio.CancelledError):
        return "CANCELLED"
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(code, int) and code != 0:
        return next((c.name for c in grpc.StatusCode if c.value[0] == code), "UNKNOWN")
    if error is not None and not isinstance(error, grpc.aio.AbortError):
        return "UNKNOWN"  # an unhandled exception becomes UNKNOWN
    return "OK"


def _workflow_id(message: Any) -> str:
    value = getattr(message, "workflow_id", None)
    if isinstance(value, str):
        return value
    workflow = getattr(message, "workflow", None)
    value = getattr(workflow, "id", None)
    return value if isinstance(value, str) else ""


class _Call:
    """One call's bookkeeping: binds the log context, then records and logs the outcome."""

    def __init__(self, method: str, metadata: Any) -> None:
        self.method = method
        self.service, _, self.name = method.lstrip("/").rpartition("/")
        found = next((v for k, v in (metadata or ()) if k == REQUEST_ID_KEY), None)
        self.request_id = usable_request_id(found if isinstance(found, str) else None)
        self.started = time.perf_counter()
        self._tokens: list[tuple[contextvars.ContextVar[str], contextvars.Token[str]]] = []

    def bind(self, request: Any = None) -> None:
        self._tokens.append((logs.request_id, logs.request_id.set(self.request_id)))
        if request is not None and (workflow_id := _workflow_id(request)):
            self._tokens.append((logs.workflow_id, logs.workflow_id.set(workflow_id)))

    def end(self, context: Any, error: BaseException | None, response: Any = None) -> None:
        seconds = time.perf_counter() - self.started
        code = _code_name(context, error)
        HANDLING_SECONDS.labels(self.service, self.name, code).observe(seconds)
        extra = {"workflow_id": _workflow_id(response)} if response is not None else {}
        level = logging.WARNING if code in ("UNKNOWN", "INTERNAL", "DATA_LOSS") else logging.INFO
        log.log(level, "%s %s %.1f ms", self.method, code, seconds * 1000, extra=extra)
        for var, token in reversed(self._tokens):
            with contextlib.suppress(ValueError):  # a stream finalised in another context
                var.reset(token)
        self._tokens.clear()


def _unary_response(method: str, metadata: Any, inner: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
    async def behavior(request: Any, context: Any) -> Any:
        call = _Call(method, metadata)
        call.bind(None if hasattr(request, "__aiter__") else request)
        try:
            response = await inner(request, context)
        except BaseException as err:
            call.end(context, err)
            raise
        call.end(context, None, response)
        return response

    return behavior


def _stream_response(method: str, metadata: Any, inner: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.iscoroutinefunction(inner):  # writes with context.write, returns nothing
        return _unary_response(method, metadata, inner)

    async def behavior(request: Any, context: Any) -> AsyncIterator[Any]:
        call = _Call(method, metadata)
        call.bind(None if hasattr(request, "__aiter__") else request)
        error: BaseException | None = None
        try:
            responses = inner(request, context)
            if hasattr(responses, "__aiter__"):
                async for response in responses:
                    yield response
            else:
                for response in responses:
                    yield response
        except BaseException as err:
            error = err
            raise
        finally:
            call.end(context, error)

    return behavior


class ServerTelemetry(grpc.aio.ServerInterceptor):
    """Latency histogram, request id and one log line for every call (see the module doc)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method: str = getattr(handler_call_details, "method", "") or ""
        if handler is None or method.startswith(_UNTOUCHED):
            return handler
        metadata = getattr(handler_call_details, "invocation_metadata", None)
        replace: Any = getattr(handler, "_replace", None)
        if replace is None:  # not the namedtuple grpc builds: leave it alone
            return handler
        if handler.unary_unary is not None:
            return replace(unary_unary=_unary_response(method, metadata, handler.unary_unary))
        if handler.stream_unary is not None:
            return replace(stream_unary=_unary_response(method, metadata, handler.stream_unary))
        if handler.unary_stream is not None:
            return replace(unary_stream=_stream_response(method, metadata, handler.unary_stream))
        if handler.stream_stream is not None:
            return replace(stream_stream=_stream_response(method, metadata, handler.stream_stream))
        return handler


def server_interceptors() -> list[grpc.aio.ServerInterceptor]:
    """The interceptors every comfyfleet gRPC server is built with."""
    return [ServerTelemetry()]
