"""Download URLs signed with HMAC-SHA256: how storage's PresignObject and the gateway (with
the key GetUrlSigning gives it) make them, and how storage checks them on GetObject.

A signed URL reads

    {public_url}/v1/objects/{key, percent-encoded, "/" kept}?expires={unix seconds}&signature={hex}

The signature is HMAC-SHA256(secret, "comfyfleet-url-v1" NUL key NUL expires) in lowercase hex.
Keys never contain NUL (see backend.validate_key), so the message is unambiguous. The gateway
serves that path by calling GetObject with the decoded key and a UrlSignature; only this
module knows how a signature is made. No I/O and no clock here: callers pass the times.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from urllib.parse import quote, urlencode

_CONTEXT = b"comfyfleet-url-v1"


class Verdict(enum.Enum):
    """What a signature check found."""

    VALID = "valid"
    INVALID = "invalid"  # not made with our secret for this key and expiry
    EXPIRED = "expired"  # made by us, but its expiry has passed


def sign(secret: bytes, key: str, expires_unix: int) -> str:
    """The hex signature of a download URL for `key` that expires at `expires_unix`."""
    message = b"\x00".join((_CONTEXT, key.encode("utf-8"), str(expires_unix).encode("ascii")))
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def verify(secret: bytes, key: str, expires_unix: int, signature: str, *, now_unix: float) -> Verdict:
    """Checks a signature in constant time, then its expiry (a forged expiry is just INVALID)."""
    expected = sign(secret, key, expires_unix).encode("ascii")
    given = signature.encode("utf-8", errors="replace")
    if not hmac.compare_digest(expected, given):
        return Verdict.INVALID
    if now_unix >= expires_unix:
        return Verdict.EXPIRED
    return Verdict.VALID


def download_url(public_url: str, key: str, expires_unix: int, signature: str) -> str:
    """The gateway URL that serves `key` with this signature."""
    query = urlencode({"expires": expires_unix, "signature": signature})
    return f"{public_url.rstrip('/')}/v1/objects/{quote(key, safe='/')}?{query}"
