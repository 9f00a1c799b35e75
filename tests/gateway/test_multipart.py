"""The streaming multipart reader: parts in order, bytes as they arrive, read on demand, errors."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from services.common.errors import InvalidArgument, TooLarge
from services.gateway.multipart import MultipartReader, describe_size, multipart_boundary
from tests.gateway.forms import BOUNDARY, CONTENT_TYPE, File, body, chunked


class CountingStream:
    """An async byte stream that counts how many chunks were pulled from it."""

    def __init__(self, data: bytes, size: int) -> None:
        self.pieces = [data[i:i + size] for i in range(0, len(data), size)]
        self.pulled = 0

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        if self.pulled == len(self.pieces):
            raise StopAsyncIteration
        self.pulled += 1
        return self.pieces[self.pulled - 1]


async def collect(reader: MultipartReader) -> list[tuple[str, str | None, str | None, list[bytes]]]:
    parts = []
    async for part in reader.parts():
        parts.append((part.name, part.filename, part.content_type, [c async for c in part.chunks()]))
    return parts


FIELDS: list[tuple[str, str | File]] = [
    ("name", "héllo wörld"),
    ("$photo", File("cat.png", bytes(range(256)) * 400, "image/png")),
    ("#method", "bilinear"),
    ("empty", ""),
]


@pytest.mark.parametrize("chunk_size", [1, 7, 100, 4096, 1 << 20])
async def test_parts_come_in_order_with_their_headers_and_bytes(chunk_size: int) -> None:
    reader = MultipartReader(CONTENT_TYPE, chunked(body(FIELDS), chunk_size), max_body_bytes=1 << 30)
    parts = await collect(reader)
    assert [(name, filename, ctype) for name, filename, ctype, _ in parts] == [
        ("name", None, None), ("$photo", "cat.png", "image/png"), ("#method", None, None), ("empty", None, None),
    ]
    assert b"".join(parts[0][3]).decode() == "héllo wörld"
    assert b"".join(parts[1][3]) == bytes(range(256)) * 400
    assert b"".join(parts[2][3]) == b"bilinear"
    assert parts[3][3] == []
    assert reader.bytes_read == len(body(FIELDS))


async def test_file_bytes_arrive_in_pieces_pulled_on_demand() -> None:
    data = body([("$photo", File("a.bin", b"x" * 100_000))])
    stream = CountingStream(data, 8192)
    reader = MultipartReader(CONTENT_TYPE, stream, max_body_bytes=1 << 30)
    async for part in reader.parts():
        pieces = part.chunks()
        first = await anext(pieces)
        # Only what was needed to produce the first piece has been read from the body.
        assert 0 < len(first) <= 8192 and stream.pulled == 1
        rest = [chunk async for chunk in pieces]
        assert len(rest) >= 10 and all(len(chunk) <= 8192 for chunk in rest)
        assert len(first) + sum(map(len, rest)) == 100_000
    assert stream.pulled == len(stream.pieces)


async def test_unread_parts_are_skipped() -> None:
    reader = MultipartReader(CONTENT_TYPE, chunked(body(FIELDS), 50), max_body_bytes=1 << 30)
    names = [part.name async for part in reader.parts()]
    assert names == ["name", "$photo", "#method", "empty"]


async def test_read_enforces_a_per_part_limit() -> None:
    reader = MultipartReader(CONTENT_TYPE, chunked(body([("name", "x" * 100)]), 10), max_body_bytes=1 << 30)
    async for part in reader.parts():
        with pytest.raises(TooLarge) as caught:
            await part.read(limit=50)
        assert caught.value.reason == "FIELD_TOO_LARGE"
        assert caught.value.details == [{"field": "name", "limit_bytes": 50}]
        break


async def test_the_body_size_is_counted_while_streaming() -> None:
    data = body([("$f", File("f.bin", b"y" * 5000))])
    reader = MultipartReader(CONTENT_TYPE, chunked(data, 1000), max_body_bytes=3000)
    received = 0
    with pytest.raises(TooLarge) as caught:
        async for part in reader.parts():
            async for chunk in part.chunks():
                received += len(chunk)
    assert caught.value.reason == "REQUEST_TOO_LARGE"
    assert 0 < received <= 3000


async def test_an_epilogue_after_the_closing_boundary_is_ignored() -> None:
    data = body([("name", "a")]) + b"trailing junk\r\n"
    parts = await collect(MultipartReader(CONTENT_TYPE, chunked(data, 5), max_body_bytes=1 << 30))
    assert [p[0] for p in parts] == ["name"]


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"this is not multipart at all",
        body([("name", "a")])[:-12],  # no closing boundary
        f"--{BOUNDARY}\r\nContent-Type: text/plain\r\n\r\nno disposition\r\n--{BOUNDARY}--\r\n".encode(),
        f"--{BOUNDARY}\r\nContent-Disposition: attachment\r\n\r\nx\r\n--{BOUNDARY}--\r\n".encode(),
        f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nx\r\n--{BOUNDARY}X".encode(),
        f"--{BOUNDARY}\r\n" + "X-Long: " + "a" * 10_000 + "\r\n\r\n",
    ],
    ids=["empty", "garbage", "truncated", "no-disposition", "not-form-data", "bad-boundary", "huge-header"],
)
async def test_malformed_bodies_are_invalid_argument(data: bytes | str) -> None:
    raw = data.encode() if isinstance(data, str) else data
    reader = MultipartReader(CONTENT_TYPE, chunked(raw, 16), max_body_bytes=1 << 30)
    with pytest.raises(InvalidArgument) as caught:
        await collect(reader)
    assert caught.value.reason == "MALFORMED_MULTIPART"


@pytest.mark.parametrize(
    ("content_type", "reason"),
    [
        (None, "UNSUPPORTED_CONTENT_TYPE"),
        ("application/json", "UNSUPPORTED_CONTENT_TYPE"),
        ("application/x-www-form-urlencoded", "UNSUPPORTED_CONTENT_TYPE"),
        ("multipart/form-data", "MALFORMED_MULTIPART"),
        ("multipart/form-data; boundary=" + "b" * 71, "MALFORMED_MULTIPART"),
    ],
)
def test_content_type_must_be_multipart_with_a_boundary(content_type: str | None, reason: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        multipart_boundary(content_type)
    assert caught.value.reason == reason


def test_boundary_is_read_from_the_content_type() -> None:
    assert multipart_boundary('multipart/form-data; boundary="abc def"') == b"abc def"
    assert multipart_boundary(CONTENT_TYPE) == BOUNDARY.encode()


def test_sizes_are_described_for_people() -> None:
    assert describe_size(50 * 1024 * 1024) == "50 MB"
    assert describe_size(2048) == "2 KB"
    assert describe_size(1000) == "1000 bytes"
