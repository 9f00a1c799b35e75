"""A streaming multipart/form-data reader: parts in order, file bytes as they arrive.

Built on python-multipart's low-level `MultipartParser`, fed one body chunk at a time from
an async byte stream (Starlette's `request.stream()`). The reader is pull-based: it reads
the next body chunk only when the consumer asks for more, so a slow consumer (a gRPC upload
waiting for flow control) slows the client down instead of filling memory. At most one
body chunk's worth of part data is held at any time.

    reader = MultipartReader(content_type, request.stream(), max_body_bytes=limit)
    async for part in reader.parts():
        part.name, part.filename, part.content_type, part.headers
        async for chunk in part.chunks(): ...     # or: await part.read(limit=...)

A part that is not consumed is skipped when the next one is requested. Errors are domain
errors: malformed bodies are InvalidArgument (reason MALFORMED_MULTIPART); a body over
`max_body_bytes` (counted on the fly) and a part over its `read` limit are TooLarge.

A small form usually arrives whole, in the first chunk. Such a body, when nothing in it is out
of the ordinary, is split into its parts directly (`whole_body_events`: a few `find`s and
splits, ~4x cheaper than the parser's states and callbacks for a create's form); anything
else goes through the parser, which gives the same parts, or its own error.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import AsyncIterator
from typing import Literal

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header

from services.common.errors import InvalidArgument, TooLarge

MALFORMED = "MALFORMED_MULTIPART"

_EventKind = Literal["headers", "data", "part_end", "end"]
_Event = tuple[_EventKind, object]

# The parser's own limits (python-multipart's defaults), which the direct split keeps too.
_MAX_HEADERS = 8
_MAX_HEADER_LINE = 4096 + 128
_TOKEN = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+-.^_`|~")


def multipart_boundary(content_type: str | None) -> bytes:
    """The boundary of a multipart/form-data Content-Type; InvalidArgument otherwise."""
    media_type, options = parse_options_header(content_type or "")
    if media_type != b"multipart/form-data":
        raise InvalidArgument(
            "the request body must be multipart/form-data",
            reason="UNSUPPORTED_CONTENT_TYPE",
            details=[{"field": "Content-Type", "value": content_type or ""}],
        )
    boundary = options.get(b"boundary", b"")
    if not boundary or len(boundary) > 70:
        raise InvalidArgument("multipart/form-data without a valid boundary", reason=MALFORMED)
    return boundary


def describe_size(size: int) -> str:
    """`52428800` -> `50 MB`, `1000` -> `1000 bytes`: for messages."""
    if size >= 1024 * 1024 and size % (1024 * 1024) == 0:
        return f"{size // (1024 * 1024)} MB"
    if size >= 1024 and size % 1024 == 0:
        return f"{size // 1024} KB"
    return f"{size} bytes"


class Part:
    """One part of the body: its headers now, its data through `chunks()` or `read()`."""

    def __init__(self, reader: MultipartReader, headers: list[tuple[str, str]]) -> None:
        self._reader = reader
        self.headers = headers
        kind, options = parse_disposition(self.header("content-disposition") or "")
        if kind != b"form-data" or b"name" not in options:
            raise InvalidArgument(
                "a multipart part has no Content-Disposition: form-data; name=...", reason=MALFORMED
            )
        self.name = _decode_param(options[b"name"])
        self.filename = _decode_param(options[b"filename"]) if b"filename" in options else None
        self.content_type = self.header("content-type")
        self._finished = False

    def header(self, name: str) -> str | None:
        """The first header called `name` (case-insensitive), if any."""
        wanted = name.lower()
        for key, value in self.headers:
            if key.lower() == wanted:
                return value
        return None

    async def chunks(self) -> AsyncIterator[bytes]:
        """The part's bytes in the pieces they arrived in; each piece is read on demand."""
        while not self._finished:
            data = await self._reader._next_data()
            if data is None:
                self._finished = True
                return
            if data:
                yield data

    async def read(self, *, limit: int) -> bytes:
        """The whole part, which must not exceed `limit` bytes (else TooLarge)."""
        buffer = bytearray()
        async for chunk in self.chunks():
            buffer += chunk
            if len(buffer) > limit:
                raise TooLarge(
                    f"field {self.name!r} is over its limit of {describe_size(limit)}",
                    reason="FIELD_TOO_LARGE",
                    details=[{"field": self.name, "limit_bytes": limit}],
                )
        return bytes(buffer)

    async def skip(self) -> None:
        """Discards the rest of the part."""
        async for _ in self.chunks():
            pass


class MultipartReader:
    """Reads a multipart/form-data body from an async byte stream, one part at a time."""

    def __init__(self, content_type: str | None, stream: AsyncIterator[bytes], *, max_body_bytes: int) -> None:
        self._stream = stream
        self._max_body_bytes = max_body_bytes
        self.bytes_read = 0
        self._events: deque[tuple[_EventKind, object]] = deque()
        self._field = bytearray()
        self._value = bytearray()
        self._headers: list[tuple[str, str]] = []
        self._exhausted = False
        self._current: Part | None = None
        self._boundary = multipart_boundary(content_type)
        self._fed = False  # a chunk has been read
        self._whole = False  # the first chunk was the whole body, split without the parser
        self._parser = MultipartParser(
            self._boundary,
            {
                "on_part_begin": self._on_part_begin,
                "on_header_field": self._on_header_field,
                "on_header_value": self._on_header_value,
                "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished,
                "on_part_data": self._on_part_data,
                "on_part_end": self._on_part_end,
                "on_end": self._on_end,
            },
        )

    async def parts(self) -> AsyncIterator[Part]:
        """Each part in body order; ends after the closing boundary."""
        while True:
            if self._current is not None:
                await self._current.skip()
                self._current = None
            kind, payload = await self._next_event()
            if kind == "end":
                return
            if kind != "headers":  # data outside a part cannot happen with a consistent parser
                raise InvalidArgument("malformed multipart body", reason=MALFORMED)
            assert isinstance(payload, list)
            self._current = Part(self, payload)
            yield self._current

    async def _next_data(self) -> bytes | None:
        """The next piece of the current part's data, or None at its end."""
        kind, payload = await self._next_event()
        if kind == "data":
            assert isinstance(payload, bytes)
            return payload
        if kind == "part_end":
            return None
        raise InvalidArgument("malformed multipart body", reason=MALFORMED)

    async def _next_event(self) -> tuple[_EventKind, object]:
        while not self._events:
            await self._feed()
        return self._events.popleft()

    async def _feed(self) -> None:
        """Reads one body chunk into the parser (which queues events)."""
        if self._exhausted:
            raise InvalidArgument("the multipart body ended early", reason=MALFORMED)
        try:
            chunk = await anext(self._stream)
        except StopAsyncIteration:
            self._exhausted = True
            if not self._whole and self._parser.state != MultipartState.END:
                raise InvalidArgument("the multipart body ended early", reason=MALFORMED) from None
            self._events.append(("end", None))
            return
        self.bytes_read += len(chunk)
        if self.bytes_read > self._max_body_bytes:
            raise TooLarge(
                f"the request is over the limit of {describe_size(self._max_body_bytes)}",
                reason="REQUEST_TOO_LARGE",
                details=[{"limit_bytes": self._max_body_bytes}],
            )
        if self._whole or self._parser.state == MultipartState.END:
            return  # epilogue after the closing boundary: ignored
        if not chunk:
            return
        if not self._fed:  # the first bytes of the body
            self._fed = True
            if (events := whole_body_events(chunk, self._boundary)) is not None:
                self._events.extend(events)
                self._whole = True
                return
        try:
            self._parser.write(chunk)
        except FormParserError as err:
            raise InvalidArgument(f"malformed multipart body: {err}", reason=MALFORMED) from None

    # Parser callbacks: they only queue events; the consumer drives the I/O.

    def _on_part_begin(self) -> None:
        self._headers = []

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _on_header_end(self) -> None:
        self._headers.append((self._field.decode("latin-1").strip(), self._value.decode("latin-1").strip()))
        self._field.clear()
        self._value.clear()

    def _on_headers_finished(self) -> None:
        self._events.append(("headers", self._headers))

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if end > start:
            self._events.append(("data", data[start:end]))

    def _on_part_end(self) -> None:
        self._events.append(("part_end", None))

    def _on_end(self) -> None:
        # The "end" event is queued when the stream is exhausted (see _feed), so that the
        # body is known to be complete; here the parser has just seen the closing boundary.
        pass


def whole_body_events(body: bytes, boundary: bytes) -> list[_Event] | None:
    """The parts of a complete body, as the parser's events, when the body is plain: it opens
    with the first delimiter, closes with the last (a CRLF after it at most), every part has
    1 to 8 header lines of `token: value` within the parser's limits, and no delimiter occurs
    anywhere else. None otherwise (a preamble, transport padding, a bare LF, an epilogue, an
    odd header, a body in several chunks...): the parser then reads it, with its own errors."""
    dash = b"--" + boundary
    opening, closing = dash + b"\r\n", b"\r\n" + dash + b"--"
    if not body.startswith(opening):
        return None
    if body.endswith(closing):
        end = len(body) - len(closing)
    elif body.endswith(closing + b"\r\n"):
        end = len(body) - len(closing) - 2
    else:
        return None
    parts = body[len(opening):end].split(b"\r\n" + dash + b"\r\n")
    if body.count(b"\r\n" + dash) != len(parts):  # the delimiters split on, and the closing one
        return None
    events: list[_Event] = []
    for part in parts:
        head, blank, data = part.partition(b"\r\n\r\n")
        if not blank or b"\n" in head.replace(b"\r\n", b"") or b"\r" in head.replace(b"\r\n", b""):
            return None
        lines = head.split(b"\r\n")
        if len(lines) > _MAX_HEADERS:
            return None
        headers = []
        for line in lines:
            name, colon, value = line.partition(b":")
            if not colon or not name or len(line) > _MAX_HEADER_LINE or not _TOKEN.issuperset(name):
                return None
            headers.append((name.decode("latin-1").strip(), value.decode("latin-1").strip()))
        events.append(("headers", headers))
        if data:
            events.append(("data", data))
        events.append(("part_end", None))
    return events


# The Content-Disposition clients send, parsed directly: parse_options_header, which reads every
# other form (escapes, `;` inside quotes, filename*, an IE path), takes ~8 us a part, this ~1.
_PLAIN_DISPOSITION = re.compile(r'form-data; name="([^"\\;]*)"(?:; filename="([^"\\;]*)")?')


def parse_disposition(value: str) -> tuple[bytes, dict[bytes, bytes]]:
    """A Content-Disposition value as parse_options_header reads it: its kind and parameters."""
    plain = _PLAIN_DISPOSITION.fullmatch(value)
    if plain is None:
        return parse_options_header(value)
    options = {b"name": plain[1].encode("latin-1")}
    if plain[2] is not None:
        options[b"filename"] = plain[2].encode("latin-1")
    return b"form-data", options


def _decode_param(raw: bytes) -> str:
    """Header parameters arrive as latin-1; browsers put UTF-8 in them."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")
