"""Download-URL signatures: what verifies, what does not, and what the URL looks like."""

from __future__ import annotations

from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from services.common.url_signing import Verdict, download_url, sign, verify

SECRET = b"s" * 32
KEY = "outputs/wf1/9/image 1.png"
EXPIRES = 1_800_000_000
GOOD = sign(SECRET, KEY, EXPIRES)


def flip(hex_text: str, at: int) -> str:
    return hex_text[:at] + ("0" if hex_text[at] != "0" else "1") + hex_text[at + 1 :]


@pytest.mark.parametrize(
    ("secret", "key", "expires", "signature", "now", "verdict"),
    [
        (SECRET, KEY, EXPIRES, GOOD, EXPIRES - 1, Verdict.VALID),
        (SECRET, "outputs/wf1/9/image 2.png", EXPIRES, GOOD, EXPIRES - 1, Verdict.INVALID),  # other key
        (SECRET, KEY, EXPIRES + 3600, GOOD, EXPIRES - 1, Verdict.INVALID),  # extended expiry
        (SECRET, KEY, EXPIRES, flip(GOOD, 0), EXPIRES - 1, Verdict.INVALID),
        (SECRET, KEY, EXPIRES, flip(GOOD, 63), EXPIRES - 1, Verdict.INVALID),
        (SECRET, KEY, EXPIRES, GOOD.upper(), EXPIRES - 1, Verdict.INVALID),  # only lowercase hex
        (SECRET, KEY, EXPIRES, GOOD[:-1], EXPIRES - 1, Verdict.INVALID),  # truncated
        (SECRET, KEY, EXPIRES, "", EXPIRES - 1, Verdict.INVALID),
        (SECRET, KEY, EXPIRES, "é" * 64, EXPIRES - 1, Verdict.INVALID),  # not ASCII
        (b"t" * 32, KEY, EXPIRES, GOOD, EXPIRES - 1, Verdict.INVALID),  # other secret
        (SECRET, KEY, EXPIRES, GOOD, EXPIRES, Verdict.EXPIRED),  # expires at that very second
        (SECRET, KEY, EXPIRES, GOOD, EXPIRES + 86_400, Verdict.EXPIRED),
        (SECRET, KEY, EXPIRES - 10, GOOD, EXPIRES + 86_400, Verdict.INVALID),  # forged and expired
    ],
)
def test_verify(secret: bytes, key: str, expires: int, signature: str, now: float, verdict: Verdict) -> None:
    assert verify(secret, key, expires, signature, now_unix=now) is verdict


def test_signatures_are_lowercase_hex_sha256_and_deterministic() -> None:
    assert len(GOOD) == 64 and GOOD == GOOD.lower() and int(GOOD, 16) >= 0
    assert sign(SECRET, KEY, EXPIRES) == GOOD


def test_key_and_expiry_cannot_be_shifted_into_each_other() -> None:
    assert sign(SECRET, "a1", 23) != sign(SECRET, "a", 123)


def test_download_url_escapes_the_key_and_keeps_slashes() -> None:
    key = "outputs/wf1/9/ümlaut ?#%&.png"
    url = download_url("http://gw.example:8080/", key, EXPIRES, sign(SECRET, key, EXPIRES))
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc) == ("http", "gw.example:8080")
    assert parts.path == "/v1/objects/outputs/wf1/9/%C3%BCmlaut%20%3F%23%25%26.png"
    assert unquote(parts.path.removeprefix("/v1/objects/")) == key
    query = parse_qs(parts.query)
    assert query == {"expires": [str(EXPIRES)], "signature": [sign(SECRET, key, EXPIRES)]}
    assert verify(SECRET, key, int(query["expires"][0]), query["signature"][0], now_unix=EXPIRES - 1) is Verdict.VALID
