"""Bodies over the size limit, with and without Content-Length, and slowly dripped bodies.

Most cases run on a second gateway in front of the same services with a 1 MB limit
(GATEWAY_MAX_REQUEST_BYTES), so that they stay fast; the 50 MB default is checked with a
declared Content-Length of 100 MB that is refused before any byte of the body is sent.

Documented behaviour for a slow client: the gateway sets no deadline on a request body. A body
dripped over seconds is read as it comes (memory stays bounded: the body is streamed), the
request succeeds, and other requests are answered meanwhile. A client that stops half-way and
disconnects leaves nothing stored.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import pytest_asyncio

from tests.api.conftest import Api
from tests.hostile.hostile import MULTIPART, assert_error, body, expect, part, still_answers, workflow_part

LIMIT = 1024 * 1024
GRAPH = {"1": {"class_type": "LoadImage", "inputs": {"image": "$file(photo)"}}}


@pytest_asyncio.fixture(scope="module", loop_scope="package")
async def small(api: Api) -> AsyncIterator[httpx.AsyncClient]:
    async with api.gateway(max_request_bytes=LIMIT) as client:
        yield client


def stored_inputs(api: Api) -> set[Path]:
    root = api.objects_dir / "inputs"
    return {p for p in root.rglob("*") if p.is_file()} if root.exists() else set()


async def nothing_left(api: Api, before: set[Path]) -> None:
    for _ in range(100):  # the handler deletes what it stored once it sees the failure
        if stored_inputs(api) <= before:
            return
        await asyncio.sleep(0.02)
    assert stored_inputs(api) <= before


def over_limit_body() -> bytes:
    return body(part("name", "big"), workflow_part(GRAPH),
                part("$photo", b"\x00" * (LIMIT + 1), filename="big.png", content_type="image/png"))


async def in_chunks(data: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


# (id, how the body is sent)
SIZE_CASES = ["content-length", "chunked-no-content-length", "truncated-at-the-limit-then-1mb-chunks"]


@pytest.mark.parametrize("how", SIZE_CASES)
async def test_body_over_the_limit_is_413_and_nothing_is_kept(api: Api, small: httpx.AsyncClient, how: str) -> None:
    auth = await api.user("size")
    before = stored_inputs(api)
    data = over_limit_body()
    headers = {**auth, "Content-Type": MULTIPART}
    if how == "content-length":
        reply = await small.post("/v1/workflow", headers=headers, content=data)
    elif how == "chunked-no-content-length":
        reply = await small.post("/v1/workflow", headers=headers, content=in_chunks(data))
    else:  # exactly the limit, cut short (400), then the whole body in chunks over 1 MB each (413)
        reply = await raw_request(api, small, "POST", "/v1/workflow", {**headers, "Content-Length": str(LIMIT)},
                                  data[:LIMIT])
        assert_error(reply, 400, "MALFORMED_MULTIPART", "ended early")
        reply = await small.post("/v1/workflow", headers=headers, content=in_chunks(data, 1024 * 1024 + 7))
    await expect(api, reply, auth, 413, "REQUEST_TOO_LARGE", "over the limit of 1 MB", client=small)
    await nothing_left(api, before)
    assert (await small.get("/v1/workflow", headers=auth)).json()["total"] == 0


async def test_a_declared_100mb_body_is_refused_before_it_is_sent(api: Api) -> None:
    """The 50 MB default: 413 on the headers alone; the 100 MB are never sent."""
    auth = await api.user("size-declared")
    started = time.monotonic()
    reply = await raw_request(api, api.client, "POST", "/v1/workflow",
                              {**auth, "Content-Type": MULTIPART, "Content-Length": str(100 * 1024 * 1024)}, b"")
    await expect(api, reply, auth, 413, "REQUEST_TOO_LARGE", "over the limit of 50 MB")
    assert time.monotonic() - started < 5


async def test_a_json_body_over_256kb_is_413(api: Api) -> None:
    auth = await api.user("size-json")
    reply = await api.client.post("/v1/runner", headers={**auth, "Content-Type": "application/json"},
                                  content=b'{"name": "' + b"a" * (100 * 1024 * 1024 // 100) + b'"}')
    await expect(api, reply, auth, 413, "REQUEST_TOO_LARGE", "over the limit of 256 KB")


async def test_a_1mb_tags_field_within_the_body_limit_is_400(api: Api, small: httpx.AsyncClient) -> None:
    auth = await api.user("size-field")
    data = body(part("name", "n"), part("tags", "t" * (LIMIT - 1000)), workflow_part())
    reply = await small.post("/v1/workflow", headers={**auth, "Content-Type": MULTIPART}, content=data)
    await expect(api, reply, auth, 400, "INVALID_TAG", "1 to 64", client=small)


# -- raw HTTP: a body sent slowly, or not at all --------------------------------------------------

async def raw_request(api: Api, client: httpx.AsyncClient, method: str, path: str, headers: dict[str, str],
                      data: bytes, *, delay: float = 0.0, pieces: int = 1) -> httpx.Response:
    """Sends the request over a socket of its own, the body in `pieces` with `delay` between them."""
    url = urlsplit(str(client.base_url))
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        head = f"{method} {path} HTTP/1.1\r\nHost: {url.netloc}\r\nConnection: close\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        if "Content-Length" not in headers:
            head += f"Content-Length: {len(data)}\r\n"
        writer.write(head.encode("latin-1") + b"\r\n")
        step = max(1, -(-len(data) // pieces))
        for i in range(0, len(data), step):
            await writer.drain()
            if delay:
                await asyncio.sleep(delay)
            writer.write(data[i:i + step])
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()
    status_line, _, rest = raw.partition(b"\r\n")
    header_block, _, content = rest.partition(b"\r\n\r\n")
    response_headers = [(name, value) for name, _, value in
                        (line.decode("latin-1").partition(": ") for line in header_block.split(b"\r\n"))]
    return httpx.Response(int(status_line.split()[1]), headers=response_headers, content=content)


async def test_a_slowly_dripped_body_is_read_and_others_are_served_meanwhile(api: Api) -> None:
    auth = await api.user("drip")
    data = body(part("name", "slow"), workflow_part(GRAPH), part("$photo", b"p" * 4000, filename="p.png"))
    drip = asyncio.create_task(raw_request(api, api.client, "POST", "/v1/workflow",
                                           {**auth, "Content-Type": MULTIPART}, data, delay=0.1, pieces=20))
    await asyncio.sleep(0.3)
    answered_meanwhile = 0
    while not drip.done():  # while the body drips (2 s), the gateway answers everyone else at once
        started = time.monotonic()
        await still_answers(api, auth)
        assert time.monotonic() - started < 1
        answered_meanwhile += not drip.done()
    assert answered_meanwhile >= 2
    reply = await drip
    assert reply.status_code == 201, reply.text
    assert json.loads(reply.content)["name"] == "slow"


async def test_a_dripped_body_abandoned_half_way_leaves_nothing(api: Api) -> None:
    auth = await api.user("drip-abandon")
    before = stored_inputs(api)
    data = body(part("name", "gone"), workflow_part(GRAPH), part("$photo", b"p" * 200_000, filename="p.png"))
    url = urlsplit(str(api.client.base_url))
    _, writer = await asyncio.open_connection(url.hostname, url.port)
    head = (f"POST /v1/workflow HTTP/1.1\r\nHost: {url.netloc}\r\nAuthorization: {auth['Authorization']}\r\n"
            f"Content-Type: {MULTIPART}\r\nContent-Length: {len(data)}\r\n\r\n")
    writer.write(head.encode())
    for i in range(0, len(data) // 2, 20_000):
        writer.write(data[i:i + 20_000])
        await writer.drain()
        await asyncio.sleep(0.05)
    writer.close()  # gone, half-way through the file part
    await nothing_left(api, before)
    assert (await api.client.get("/v1/workflow", headers=auth)).json()["total"] == 0
    await still_answers(api, auth)
