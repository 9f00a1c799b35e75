"""Standard Webhooks signatures, checked against the reference algorithm computed here and the
specification's published test vector."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from services.scheduler.webhooks import signing

# The vector of the Standard Webhooks reference libraries' tests.
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
MSG_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
TIMESTAMP = 1614265330
BODY = b'{"test": 2432232314}'
EXPECTED = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def reference(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    key = base64.b64decode(secret.split("_", 1)[1])
    mac = hmac.new(key, msg_id.encode() + b"." + str(timestamp).encode() + b"." + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def test_the_published_vector() -> None:
    assert signing.signature(SECRET, MSG_ID, TIMESTAMP, BODY) == EXPECTED == reference(SECRET, MSG_ID, TIMESTAMP, BODY)


def test_headers_and_verify_with_a_fresh_secret() -> None:
    secret = signing.new_secret()
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) == 32
    headers = signing.headers(secret, "d-1", 1700000000, b'{"a":1}')
    assert headers["webhook-id"] == "d-1" and headers["webhook-timestamp"] == "1700000000"
    assert headers["webhook-signature"] == reference(secret, "d-1", 1700000000, b'{"a":1}')
    assert signing.verify(secret, "d-1", 1700000000, b'{"a":1}', "v1,bogus " + headers["webhook-signature"])


@pytest.mark.parametrize("change", ["id", "timestamp", "body", "secret"])
def test_any_change_breaks_the_signature(change: str) -> None:
    args = {"secret": SECRET, "msg_id": MSG_ID, "timestamp": TIMESTAMP, "body": BODY}
    header = signing.signature(**args)  # type: ignore[arg-type]
    changed = {**args, **{"id": {"msg_id": "msg_other"}, "timestamp": {"timestamp": TIMESTAMP + 1},
                          "body": {"body": BODY + b" "}, "secret": {"secret": signing.new_secret()}}[change]}
    assert not signing.verify(changed["secret"], changed["msg_id"], changed["timestamp"], changed["body"], header)  # type: ignore[arg-type]
