"""GET /v1/user: the caller, as the scheduler knows them from the bearer token, with the
limits of their tier and how much of each is in use."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from services.gateway import presenters
from services.gateway.context import bearer, gateway


async def get_user(request: Request) -> Response:
    reply = await gateway(request).scheduler.get_user_with_limits(bearer(request))
    shown = presenters.user(reply.user)
    if reply.HasField("limits"):
        shown["limits"] = presenters.limits(reply.limits)
    return JSONResponse(shown)
