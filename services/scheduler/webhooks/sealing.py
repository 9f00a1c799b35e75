"""Secrets at rest: endpoint secrets are sealed with AES-256-GCM under the operator's key.

The server must sign every delivery with the endpoint's secret itself, so a one-way hash
(as for API tokens) is not enough: the secret is stored encrypted, and a stolen database
without the key (SCHEDULER_WEBHOOK_KEY_FILE) does not reveal it. Each sealed value is
"v1." + base64(nonce(12) + ciphertext+tag), with the row's id as associated data, so a
sealed secret copied to another row does not open.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES = 32
_VERSION = "v1."


class SecretBox:
    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"a webhook key is {KEY_BYTES} bytes (base64 in its file)")
        self._aead = AESGCM(key)

    def seal(self, secret: str, row_id: str) -> str:
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, secret.encode(), row_id.encode())
        return _VERSION + base64.b64encode(nonce + sealed).decode("ascii")

    def open(self, sealed: str, row_id: str) -> str:
        if not sealed.startswith(_VERSION):
            raise ValueError("unknown sealed-secret format")
        raw = base64.b64decode(sealed.removeprefix(_VERSION))
        try:
            return self._aead.decrypt(raw[:12], raw[12:], row_id.encode()).decode()
        except InvalidTag:
            raise ValueError("a webhook secret does not open with this key") from None


def load_key(path: Path, *, create: bool) -> bytes:
    """The key in `path` (base64 of 32 bytes); with `create`, a new one is written when missing."""
    if not path.exists():
        if not create:
            raise FileNotFoundError(f"webhook key file {path} does not exist")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(base64.b64encode(os.urandom(KEY_BYTES)).decode("ascii") + "\n")
        os.chmod(tmp, 0o600)
        try:
            os.link(tmp, path)  # never replaces a key another process wrote meanwhile
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    return base64.b64decode(path.read_text().strip(), validate=True)
