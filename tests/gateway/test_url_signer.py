"""UrlSigner: the gateway signs download URLs itself with what GetUrlSigning gave; asks once,
again every minute without making anyone wait, and leaves URLs to PresignObject when it cannot."""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qs, unquote, urlsplit

import grpc
import pytest

from services.common.url_signing import Verdict, verify
from services.gateway.url_signer import REFRESH_SECONDS, Signing, UrlSigner

KEY = "outputs/7c9e6679-7425-40de-944b-e07fc1f90ae7/3/my image.png"
WALL = 1_800_000_000.4


class Storage:
    """GetUrlSigning's answers, in turn; counts the calls (each takes a loop turn or two)."""

    def __init__(self, *answers: Signing | Exception | None) -> None:
        self.answers = list(answers)
        self.calls = 0

    async def fetch(self) -> Signing | None:
        self.calls += 1
        await asyncio.sleep(0.01)
        answer = self.answers[0] if len(self.answers) == 1 else self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def signing(key: bytes = b"k" * 32, ttl_seconds: int = 300) -> Signing:
    return Signing(key=key, public_url="https://api.example.test/", ttl_seconds=ttl_seconds)


def rig(storage: Storage) -> tuple[UrlSigner, list[float]]:
    clock = [100.0]
    return UrlSigner(storage.fetch, clock=lambda: clock[0], wall_clock=lambda: WALL), clock


def check(url: str, key: bytes) -> Verdict:
    """What storage's signed GetObject would find, as the gateway's GET /v1/objects/... asks it."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    object_key = unquote(parts.path.removeprefix("/v1/objects/"))
    return verify(key, object_key, int(query["expires"][0]), query["signature"][0], now_unix=WALL)


async def test_a_url_signed_here_passes_storages_check() -> None:
    storage = Storage(signing(ttl_seconds=120))
    signer, _ = rig(storage)
    url = await signer.sign(KEY)
    assert url is not None
    assert url.startswith("https://api.example.test/v1/objects/outputs/7c9e6679-7425-40de-944b-e07fc1f90ae7/3/my%20image.png?")
    assert parse_qs(urlsplit(url).query)["expires"] == [str(int(WALL) + 120)]
    assert check(url, b"k" * 32) is Verdict.VALID
    assert check(url, b"x" * 32) is Verdict.INVALID


async def test_concurrent_first_urls_wait_for_one_call() -> None:
    storage = Storage(signing())
    signer, _ = rig(storage)
    urls = await asyncio.gather(*(signer.sign(f"{KEY}.{i}") for i in range(20)))
    assert all(url is not None for url in urls)
    assert storage.calls == 1
    await signer.sign(KEY)
    assert storage.calls == 1


async def test_asked_again_after_a_minute_while_the_last_answer_is_used() -> None:
    storage = Storage(signing(b"old" * 11), signing(b"new" * 11))
    signer, clock = rig(storage)
    assert check(await signer.sign(KEY) or "", b"old" * 11) is Verdict.VALID
    clock[0] += REFRESH_SECONDS
    # the refresh starts; this URL does not wait for it
    assert check(await signer.sign(KEY) or "", b"old" * 11) is Verdict.VALID
    await asyncio.sleep(0.05)
    assert storage.calls == 2
    assert check(await signer.sign(KEY) or "", b"new" * 11) is Verdict.VALID  # a storage restarted with a new key


@pytest.mark.parametrize("answer", [None, grpc.RpcError("unreachable")], ids=["s3-backend", "call-failed"])
async def test_none_when_storage_makes_its_own_urls_or_did_not_answer(answer: Signing | Exception | None) -> None:
    storage = Storage(answer)
    signer, _ = rig(storage)
    assert await signer.sign(KEY) is None
    assert await signer.sign(KEY) is None
    # an answer of None is kept for a minute; a failed call is asked again by the next URL
    assert storage.calls == (1 if answer is None else 2)


async def test_a_failed_refresh_keeps_the_last_answer() -> None:
    storage = Storage(signing(b"kept" * 8), grpc.RpcError("storage restarting"), signing(b"kept" * 8))
    signer, clock = rig(storage)
    assert await signer.sign(KEY) is not None
    clock[0] += REFRESH_SECONDS
    assert check(await signer.sign(KEY) or "", b"kept" * 8) is Verdict.VALID
    await asyncio.sleep(0.05)
    assert check(await signer.sign(KEY) or "", b"kept" * 8) is Verdict.VALID  # asks again meanwhile
    await asyncio.sleep(0.05)
    assert storage.calls == 3
