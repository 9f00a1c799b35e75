"""A body that arrives whole is split without the parser (multipart.whole_body_events) only when
that gives exactly what the parser gives: the same parts, headers and bytes, or the same error.
Checked against the parser itself on generated bodies, plain and damaged in the ways clients
and attackers damage them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.common.errors import ComfyfleetError
from services.gateway import multipart
from services.gateway.multipart import MultipartReader, whole_body_events

BOUNDARY = b"----formbound7MA4YWxk"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY.decode()}"


def build(parts: list[tuple[list[bytes], bytes]], *, closing: bytes = b"\r\n") -> bytes:
    out = b""
    for lines, data in parts:
        out += b"--" + BOUNDARY + b"\r\n" + b"".join(line + b"\r\n" for line in lines) + b"\r\n" + data + b"\r\n"
    return out + b"--" + BOUNDARY + b"--" + closing


async def outcome(body: bytes, *, direct: bool) -> Any:
    """What a consumer sees: each part's headers and bytes, or the error's type and reason."""

    async def one_chunk() -> AsyncIterator[bytes]:
        yield body

    real = multipart.whole_body_events
    if not direct:
        multipart.whole_body_events = lambda _body, _boundary: None  # type: ignore[assignment]
    try:
        reader = MultipartReader(CONTENT_TYPE, one_chunk(), max_body_bytes=1 << 20)
        seen = []
        async for part in reader.parts():
            seen.append((part.headers, part.name, part.filename, await part.read(limit=1 << 20)))
        return "ok", seen
    except ComfyfleetError as err:
        return type(err).__name__, err.reason
    finally:
        multipart.whole_body_events = real


def same_as_parser(body: bytes) -> None:
    direct = asyncio.run(outcome(body, direct=True))
    parsed = asyncio.run(outcome(body, direct=False))
    assert direct == parsed, body


names = st.text(st.sampled_from("abcxyz$#_-é"), min_size=1, max_size=6)
data = st.binary(max_size=40) | st.sampled_from([b"", b"\r\n", b"--", b"\r\n--", b"\r\n--" + BOUNDARY[:-1],
                                                b"--" + BOUNDARY, b"\r\n--" + BOUNDARY + b"x"])
GOOD_LINES = [b"Content-Type: text/plain", b"Content-Type:text/plain", b"content-type:  image/png ", b"X-Extra: \t1",
              b"X-Empty:", b"X-Colons: a:b: c", b"X-Latin: caf\xe9", b"X-Long: " + b"v" * 4000]
BAD_LINES = [b"Bad Name: x", b"NoColon", b": empty name", b"X-Cr: a\rb", b"X-Lf: a\nb", b" folded: x",
             b"X-Too-Long: " + b"v" * 4300, b"X\x00: nul"]
# Mostly plain lines and plain bodies, so that both ways are taken often.
header_lines = st.lists(st.sampled_from(GOOD_LINES * 6 + BAD_LINES), max_size=8)
DAMAGE = ["none"] * 12 + ["preamble", "newlines first", "padding", "bare lf", "cut", "lf only"]


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    parts = []
    for _ in range(draw(st.integers(1, 4))):
        name = draw(names).encode()
        disposition = b'Content-Disposition: form-data; name="' + name + b'"'
        if draw(st.booleans()):
            disposition += b'; filename="f.png"'
        lines = draw(header_lines)
        lines.insert(draw(st.integers(0, len(lines))), disposition)
        parts.append((lines, draw(data)))
    body = build(parts, closing=draw(st.sampled_from([b"", b"\r\n", b"\r\n", b"\r\nepilogue", b"\n"])))
    damage = draw(st.sampled_from(DAMAGE))
    if damage == "preamble":
        body = b"preamble\r\n" + body
    elif damage == "newlines first":
        body = b"\r\n" + body
    elif damage == "padding":
        body = body.replace(BOUNDARY + b"\r\n", BOUNDARY + b" \r\n", 1)
    elif damage == "bare lf":
        body = body.replace(b"\r\n\r\n", b"\n\r\n", 1)
    elif damage == "cut":
        body = body[:draw(st.integers(0, len(body)))]
    elif damage == "lf only":
        body = body.replace(b"\r\n", b"\n")
    return body


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies())
def test_a_whole_body_is_read_as_the_parser_reads_it(body: bytes) -> None:
    same_as_parser(body)


def test_a_plain_form_is_split_without_the_parser() -> None:
    body = build([([b'Content-Disposition: form-data; name="name"'], b"bench"),
                  ([b'Content-Disposition: form-data; name="workflow_json"; filename="w.json"',
                    b"Content-Type: application/json"], b'{"1": {}}')])
    events = whole_body_events(body, BOUNDARY)
    assert events == [
        ("headers", [("Content-Disposition", 'form-data; name="name"')]), ("data", b"bench"), ("part_end", None),
        ("headers", [("Content-Disposition", 'form-data; name="workflow_json"; filename="w.json"'),
                     ("Content-Type", "application/json")]), ("data", b'{"1": {}}'), ("part_end", None)]
    same_as_parser(body)


@pytest.mark.parametrize("body", [
    b"preamble\r\n" + build([([b'Content-Disposition: form-data; name="a"'], b"1")]),  # a preamble
    b"x" * (len(BOUNDARY) + 4) + build([([b'Content-Disposition: form-data; name="a"'], b"1")])[len(BOUNDARY) + 4:],
    build([([b'Content-Disposition: form-data; name="a"'], b"1")], closing=b"\r\nafter"),  # an epilogue
    build([([b'Content-Disposition: form-data; name="a"'], b"x\r\n--" + BOUNDARY + b"--\r\n")]),  # closed twice
    build([([b'Content-Disposition: form-data; name="a"'], b"1")])[:-3],  # cut short
    build([([b"Bad Name: x"], b"1")]),  # not a token
    build([([b"X: 1"] * 9 + [b'Content-Disposition: form-data; name="a"'], b"1")]),  # over 8 headers
])
def test_a_body_out_of_the_ordinary_is_left_to_the_parser(body: bytes) -> None:
    assert whole_body_events(body, BOUNDARY) is None
    same_as_parser(body)


@pytest.mark.parametrize("line", BAD_LINES)
def test_a_header_line_the_parser_refuses_is_left_to_it(line: bytes) -> None:
    body = build([([b'Content-Disposition: form-data; name="a"', line], b"1")])
    assert whole_body_events(body, BOUNDARY) is None
    same_as_parser(body)


@pytest.mark.parametrize("line", GOOD_LINES)
def test_a_plain_header_line_is_read_as_the_parser_reads_it(line: bytes) -> None:
    body = build([([b'Content-Disposition: form-data; name="a"', line], b"1")])
    assert whole_body_events(body, BOUNDARY) is not None
    same_as_parser(body)


def test_a_body_after_an_empty_chunk_is_still_split_directly_and_one_in_pieces_is_parsed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    body = build([([b'Content-Disposition: form-data; name="a"'], b"1"),
                  ([b'Content-Disposition: form-data; name="b"'], b"2")])
    direct: list[bool] = []

    def spy(chunk: bytes, boundary: bytes) -> Any:
        events = whole_body_events(chunk, boundary)
        direct.append(events is not None)
        return events

    monkeypatch.setattr(multipart, "whole_body_events", spy)

    async def read(pieces: list[bytes]) -> list[tuple[str, bytes]]:
        async def stream() -> AsyncIterator[bytes]:
            for piece in pieces:
                yield piece

        reader = MultipartReader(CONTENT_TYPE, stream(), max_body_bytes=1 << 20)
        return [(part.name, await part.read(limit=100)) async for part in reader.parts()]

    assert asyncio.run(read([b"", body, b""])) == [("a", b"1"), ("b", b"2")]
    assert direct == [True]
    direct.clear()
    assert asyncio.run(read([body[:40], body[40:]])) == [("a", b"1"), ("b", b"2")]
    assert direct == [False]  # the first piece alone is not a whole body; the parser reads both
