"""The HTTP side of a delivery (aiohttp): one POST per attempt, never following redirects,
reading at most MAX_RESPONSE_BYTES of the answer, within the attempt's timeout.

Targets are checked again at every attempt: a literal IP by the policy, a host name by
`PolicyResolver`, which resolves it, refuses the connection when any address is denied, and
hands aiohttp exactly the addresses it checked (no second lookup a DNS rebinding could change).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp.abc import ResolveResult
from aiohttp.resolver import ThreadedResolver

from services.scheduler.webhooks.errors import InvalidTarget, TargetDenied
from services.scheduler.webhooks.targets import TargetPolicy

MAX_RESPONSE_BYTES = 64 * 1024
USER_AGENT = "comfyfleet-webhooks/1"
RESOLVE_TIMEOUT_SECONDS = 5.0


class DeniedAddress(OSError):
    """A resolved address the policy refuses (an OSError, so aiohttp reports it as a connect error)."""


class PolicyResolver(ThreadedResolver):
    def __init__(self, policy: TargetPolicy) -> None:
        super().__init__()
        self.policy = policy

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results = await super().resolve(host, port, family)
        try:
            self.policy.check_addresses(host, [ipaddress.ip_address(r["host"].split("%")[0]) for r in results])
        except TargetDenied as err:
            raise DeniedAddress(err.message) from None
        return results


async def check_target(policy: TargetPolicy, url: str, field: str = "url") -> None:
    """Registration-time check: the URL's form, then every address its host resolves to."""
    target = policy.check_url(url, field)
    if target.literal is not None:
        return
    try:
        infos = await asyncio.wait_for(asyncio.get_running_loop().getaddrinfo(
            target.host, target.port, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT_SECONDS)
    except (OSError, UnicodeError, TimeoutError):
        raise InvalidTarget(f"webhook host {target.host!r} does not resolve", field) from None
    policy.check_addresses(target.host, [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos],
                           field)


@dataclass(frozen=True)
class Answer:
    status_code: int  # 0 without an HTTP answer
    error: str
    duration_ms: int

    @property
    def ok(self) -> bool:
        return 200 <= self.status_code < 300


class Sender:
    def __init__(self, policy: TargetPolicy, *, timeout_seconds: float) -> None:
        self.policy = policy
        self.timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(resolver=PolicyResolver(self.policy), use_dns_cache=False, limit=0)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self.timeout, trust_env=False)
        return self._session

    async def post(self, url: str, headers: dict[str, str], body: bytes) -> Answer:
        started = time.monotonic()

        def answer(status: int, error: str = "") -> Answer:
            return Answer(status, error[:500], int((time.monotonic() - started) * 1000))

        try:
            self.policy.check_url(url)  # the policy may have changed since the delivery was made
        except (TargetDenied, InvalidTarget) as err:
            return answer(0, f"target denied: {err.message}")
        all_headers: dict[str, Any] = {"content-type": "application/json", "user-agent": USER_AGENT, **headers}
        try:
            async with self._client().post(url, data=body, headers=all_headers, allow_redirects=False) as reply:
                await reply.content.read(MAX_RESPONSE_BYTES)
                return answer(reply.status)
        except TimeoutError:
            return answer(0, f"timed out after {self.timeout.total:g} s")
        except aiohttp.ClientConnectorError as err:
            cause = err.os_error
            if isinstance(cause, DeniedAddress):
                return answer(0, f"target denied: {cause}")
            return answer(0, f"cannot connect: {cause.strerror or cause}")
        except aiohttp.ClientError as err:
            return answer(0, f"{type(err).__name__}: {err}")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
