"""Building multipart/form-data bodies by hand, so tests control every byte and every chunk."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

BOUNDARY = "gatewaytestboundary7MA4YWxkTrZu0gW"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


@dataclass(frozen=True)
class File:
    filename: str
    data: bytes
    content_type: str = "application/octet-stream"


def body(fields: list[tuple[str, str | File]], boundary: str = BOUNDARY) -> bytes:
    """The multipart body of `fields`, in order (a str is a text part, a File a file part)."""
    out = bytearray()
    for name, value in fields:
        out += f"--{boundary}\r\n".encode()
        if isinstance(value, File):
            out += f'Content-Disposition: form-data; name="{name}"; filename="{value.filename}"\r\n'.encode()
            out += f"Content-Type: {value.content_type}\r\n\r\n".encode()
            out += value.data
        else:
            out += f'Content-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
            out += value.encode()
        out += b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out)


async def chunked(data: bytes, size: int) -> AsyncIterator[bytes]:
    """`data` in pieces of `size` bytes."""
    for offset in range(0, len(data), size):
        yield data[offset:offset + size]
