"""A request id for every HTTP request, carried to the scheduler and storage, and an access log.

The id is the client's `X-Request-ID` when it sent a usable one (at most 128 URL-safe
characters), else a new one. It is bound in the logging context (services/common/logs.py)
for everything the request does, sent back as the response's `X-Request-ID`, and put into
the gRPC metadata of the calls the request makes (`x-request-id`, scheduler_client.py), so
the scheduler's log lines about the same request carry the same id. When the response is
done, one access line is logged: method, path, status, duration.
"""

from __future__ import annotations

import logging
import time

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common import logs
from services.common.grpc_telemetry import usable_request_id

log = logging.getLogger("services.gateway.access")

HEADER = "x-request-id"


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = usable_request_id(Headers(scope=scope).get(HEADER))
        started = time.perf_counter()
        status = 500  # unless a response starts

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = list(message.get("headers", []))
                headers.append((HEADER.encode("latin-1"), request_id.encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        with logs.log_context(request_id=request_id):
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                log.info('%s %s %d %.1f ms', scope.get("method", ""), scope.get("path", ""), status,
                         (time.perf_counter() - started) * 1000)
