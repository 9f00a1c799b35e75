"""GET /v1/user: the caller, as the scheduler knows them from the bearer token."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from services.gateway import presenters
from services.gateway.context import bearer, gateway


async def get_user(request: Request) -> Response:
    user = await gateway(request).scheduler.get_user(bearer(request))
    return JSONResponse(presenters.user(user))
