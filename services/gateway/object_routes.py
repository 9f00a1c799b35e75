"""GET /v1/objects/{key}: download an object through a signed gateway URL (local storage backend).

No bearer token: `expires` and `signature` (made by storage's PresignObject) are the
credential, and storage checks them. The response starts only after storage has sent the
ObjectRef, so a bad signature is a proper 403 and a missing object a 404.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from services.gateway.context import gateway
from services.gateway.workflow_form import invalid_field

_EXPIRES = re.compile(r"[0-9]{1,12}")
_SIGNATURE = re.compile(r"[0-9A-Fa-f]{1,256}")


class ObjectResponse(StreamingResponse):
    """Streams object chunks and always closes the chunk iterator (ending the gRPC call)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()


async def download_object(request: Request) -> Response:
    """The object's bytes as an attachment."""
    expires = request.query_params.get("expires", "")
    signature = request.query_params.get("signature", "")
    if not _EXPIRES.fullmatch(expires):
        raise invalid_field("expires", "expires must be a Unix time in seconds", reason="INVALID_SIGNED_URL")
    if not _SIGNATURE.fullmatch(signature):
        raise invalid_field("signature", "signature must be a hex string", reason="INVALID_SIGNED_URL")
    key: str = request.path_params["key"]
    ref, chunks = await gateway(request).storage.open_download(key, int(expires), signature)
    headers = {
        "Content-Type": ref.content_type or "application/octet-stream",
        "Content-Length": str(ref.size_bytes),
        "Content-Disposition": content_disposition(key.rsplit("/", 1)[-1]),
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "private, max-age=0",
    }
    return ObjectResponse(_only_bytes(chunks), headers=headers)


async def _only_bytes(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    try:
        async for chunk in chunks:
            yield chunk
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()


def content_disposition(filename: str) -> str:
    """`attachment; filename="..."`, plus RFC 6266 `filename*` when the name is not plain ASCII."""
    fallback = "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in filename)
    value = f'attachment; filename="{fallback or "download"}"'
    if fallback != filename:
        value += f"; filename*=UTF-8''{quote(filename, safe='')}"
    return value
