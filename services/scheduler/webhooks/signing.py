"""Standard Webhooks signatures (https://www.standardwebhooks.com): pure functions.

A secret is "whsec_" + base64(key bytes). For a message with id `msg_id`, sent at unix time
`timestamp` with body `body`, the signature is
    "v1," + base64(HMAC-SHA256(key, f"{msg_id}.{timestamp}.{body}"))
and goes in the `webhook-signature` header beside `webhook-id` and `webhook-timestamp`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

PREFIX = "whsec_"
KEY_BYTES = 32


def new_secret() -> str:
    """A fresh secret: "whsec_" + base64 of 32 random bytes."""
    return PREFIX + base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode("ascii")


def secret_key(secret: str) -> bytes:
    """The HMAC key of a secret (the base64 after "whsec_")."""
    return base64.b64decode(secret.removeprefix(PREFIX), validate=True)


def signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def headers(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers of one attempt."""
    return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": signature(secret, msg_id, timestamp, body)}


def verify(secret: str, msg_id: str, timestamp: int, body: bytes, header: str) -> bool:
    """Whether any "v1,..." signature in a (space-separated) webhook-signature header matches."""
    expected = signature(secret, msg_id, timestamp, body)
    return any(hmac.compare_digest(expected, candidate) for candidate in header.split())
