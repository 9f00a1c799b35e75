"""What every route needs: the settings and the adapters, held on `app.state`, and the caller's token."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import grpc
from starlette.requests import Request

from services.gateway.config import GatewaySettings
from services.gateway.errors import Unauthenticated
from services.gateway.feeds import Feeds
from services.gateway.scheduler_client import Scheduler
from services.gateway.storage_client import Storage


@dataclass(frozen=True, slots=True)
class Gateway:
    """The gateway's collaborators for the lifetime of the app (built in the lifespan)."""

    settings: GatewaySettings
    scheduler: Scheduler
    storage: Storage
    # Dependency name -> channel, for the readiness probe's gRPC health checks.
    channels: Mapping[str, grpc.aio.Channel]
    # SSE feeds: shared WatchWorkflow streams (one per watched workflow) fanned out to
    # subscribers, and one unshared feed per /v1/events subscriber.
    feeds: Feeds


def gateway(request: Request) -> Gateway:
    """The Gateway of the app serving `request`."""
    found: Gateway = request.app.state.gateway
    return found


# Longer than any token the scheduler issues (46 characters), far shorter than what gRPC takes
# in metadata: past its soft limit (8 KiB for all of a call's metadata) gRPC refuses a call at
# random, so a token of ~8,000 characters got a 401 from the scheduler or a 413 from gRPC.
MAX_TOKEN_CHARS = 1024


def bearer(request: Request) -> str:
    """The Authorization header to forward ("Bearer <token>"); 401 when absent or malformed.

    Whether the token is valid is the scheduler's decision, not the gateway's, except for one
    longer than MAX_TOKEN_CHARS: no token is, so the gateway answers as the scheduler would.
    """
    value = request.headers.get("authorization", "")
    if not value.strip():
        raise Unauthenticated("missing bearer token", reason="MISSING_TOKEN")
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or not (token.isascii() and token.isprintable()) or " " in token:
        raise Unauthenticated("the Authorization header must be 'Bearer <token>'", reason="MALFORMED_TOKEN")
    if len(token) > MAX_TOKEN_CHARS:
        raise Unauthenticated("invalid token", reason="TOKEN_INVALID")
    return f"Bearer {token}"
