"""Rate limit per token: at most `limit` requests in any `window` seconds (a sliding log).

`RateLimiter` is the pure part (the clock is passed in); the gateway's edge (edge.py) applies
it to the /v1 API (`rate_limited`), keyed by the Authorization header's token (or the client address when there is
none), and answers 429 with `Retry-After` (whole seconds until a slot frees) and the public
error body. Refused requests do not count. Each gateway copy counts its own requests: with N
copies behind a balancer a token gets up to N times the limit, which is the trade for keeping
the gateway stateless.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import deque

from starlette.types import Message, Scope

from services.gateway.errors import error_body

# Keys idle longer than a window are dropped once this many are tracked.
PRUNE_AT_KEYS = 10_000
EXEMPT_PREFIXES = ("/v1/objects/",)


class RateLimiter:
    def __init__(self, limit: int, window_seconds: float) -> None:
        self.limit = limit
        self.window = window_seconds
        self._hits: dict[str, deque[float]] = {}

    def hit(self, key: str, now: float) -> float | None:
        """Counts a request; None when allowed, else the seconds until one would be."""
        hits = self._hits.get(key)
        if hits is None:
            if len(self._hits) >= PRUNE_AT_KEYS:
                self._prune(now)
            hits = self._hits[key] = deque()
        while hits and hits[0] <= now - self.window:
            hits.popleft()
        if len(hits) >= self.limit:
            return hits[0] + self.window - now
        hits.append(now)
        return None

    def _prune(self, now: float) -> None:
        for key in [k for k, v in self._hits.items() if not v or v[-1] <= now - self.window]:
            del self._hits[key]


def _key(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            return "token:" + hashlib.sha256(value.strip()).hexdigest()
    client = scope.get("client")
    return f"address:{client[0] if client else ''}"


def rate_limited(path: str) -> bool:
    """Whether requests to `path` count against the limit: the /v1 API, downloads excepted."""
    return path.startswith("/v1/") and not path.startswith(EXEMPT_PREFIXES)


def refusal(limiter: RateLimiter, scope: Scope, now: float) -> tuple[Message, Message] | None:
    """Counts the request of `scope`; the 429 answer (start and body) when over the limit, else None."""
    wait = limiter.hit(_key(scope), now)
    if wait is None:
        return None
    window = f"{limiter.window:g}"
    body = json.dumps(error_body(429, f"rate limit exceeded: {limiter.limit} requests per {window} seconds",
                                 "RATE_LIMITED")).encode()
    return ({"type": "http.response.start", "status": 429, "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                (b"retry-after", str(max(1, math.ceil(wait))).encode())]},
            {"type": "http.response.body", "body": body})
