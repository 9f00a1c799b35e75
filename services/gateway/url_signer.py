"""Download URLs the gateway signs itself, with what storage's GetUrlSigning gave it.

With a local-directory backend a download URL is the gateway's own (GET /v1/objects/...,
served by GetObject with the URL's signature), so the gateway can make it: an HMAC of a few
microseconds instead of a PresignObject round trip. That round trip sat on the path of every
output's first presentation (its SSE frame is rendered right when the output is stored).

What signs the URLs is asked for once, then again every REFRESH_SECONDS, in the background
while the last answer keeps being used (a storage restarted with a new key: URLs signed with
the old one fail their check, for a minute at most). `sign` answers None when the gateway
cannot sign: an S3 backend (its URLs are presigned S3 URLs), a storage without GetUrlSigning,
or a storage that did not answer; the caller then calls PresignObject.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable

from comfyfleet.storage.v1 import storage_service_pb2

from services.common import url_signing

log = logging.getLogger(__name__)

REFRESH_SECONDS = 60.0

Signing = storage_service_pb2.GatewayUrlSigning
# GetUrlSigning: the signing, or None when storage makes its URLs itself (or cannot say);
# raises when the call failed (then nothing is remembered and the next URL asks again).
Fetch = Callable[[], Awaitable[Signing | None]]


class UrlSigner:
    def __init__(self, fetch: Fetch, *, clock: Callable[[], float], wall_clock: Callable[[], float]) -> None:
        self._fetch = fetch
        self._clock = clock  # when to ask again
        self._wall_clock = wall_clock  # a URL's expiry (unix seconds)
        self._signing: Signing | None = None
        self._asked_at: float | None = None  # (clock) of the last answer
        self._asking: asyncio.Task[None] | None = None

    async def sign(self, key: str) -> str | None:
        """A signed download URL for `key`, or None: ask PresignObject."""
        signing = await self._current()
        if signing is None:
            return None
        expires_unix = math.floor(self._wall_clock()) + signing.ttl_seconds
        signature = url_signing.sign(signing.key, key, expires_unix)
        return url_signing.download_url(signing.public_url, key, expires_unix, signature)

    async def _current(self) -> Signing | None:
        if self._asked_at is None:  # nothing known yet: every caller waits for the one call
            await asyncio.shield(self._ask())
        elif self._clock() >= self._asked_at + REFRESH_SECONDS:
            self._ask()  # the last answer goes on being used meanwhile
        return self._signing

    def _ask(self) -> asyncio.Task[None]:
        if self._asking is None or self._asking.done():
            self._asking = asyncio.create_task(self._refresh(), name="get-url-signing")
        return self._asking

    async def _refresh(self) -> None:
        try:
            signing = await self._fetch()
        except Exception as err:  # storage unreachable: PresignObject says so with its own error
            log.debug("GetUrlSigning failed: %s", err)
            return
        self._signing = signing
        self._asked_at = self._clock()
