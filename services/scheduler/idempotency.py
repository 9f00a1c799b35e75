"""Idempotency-Key on creates, reruns and template runs.

A request's fingerprint is the sha256 of its canonical content: the operation (and its
source workflow or template), the fields (a webhook_url too, when there is one), and each
input (a file by its sha256, size and name, not by where this attempt stored it). The
first successful request stores its answer under (user, key) in the transaction that
creates the workflow; within 24 h the same key with the same fingerprint gets that answer
back, with another fingerprint a 409. Failed requests store nothing, so a client may retry
them with the same key.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta

from comfyfleet.scheduler.v1 import workflow_service_pb2

from services.scheduler.errors import Conflict, InvalidArgument

TTL = timedelta(hours=24)
MAX_KEY_CHARS = 255


@dataclass(frozen=True)
class Claim:
    """A key and the fingerprint of the request that carries it."""

    key: str
    fingerprint: str


class KeyReused(Conflict):
    default_reason = "IDEMPOTENCY_KEY_REUSED"

    def __init__(self) -> None:
        super().__init__("Idempotency-Key was already used with a different request",
                         details=[{"field": "Idempotency-Key"}])


def check_key(key: str) -> str:
    if not 1 <= len(key) <= MAX_KEY_CHARS or not (key.isascii() and key.isprintable()):
        raise InvalidArgument(f"Idempotency-Key must be 1 to {MAX_KEY_CHARS} printable ASCII characters",
                              reason="INVALID_IDEMPOTENCY_KEY", details=[{"field": "Idempotency-Key"}])
    return key


def _inputs(inputs: Iterable[workflow_service_pb2.WorkflowInput]) -> list[list[object]]:
    canonical: list[list[object]] = []
    for i in inputs:
        if i.HasField("object"):
            canonical.append([i.field, "file", i.object.sha256, i.object.size_bytes, i.filename])
        else:
            canonical.append([i.field, "text", i.value])
    return sorted(canonical, key=json.dumps)


def claim(key: str, operation: str, inputs: Iterable[workflow_service_pb2.WorkflowInput], *,
          webhook_url: str = "", **fields: object) -> Claim | None:
    """The claim of a request (None without a key). `webhook_url` counts only when set, so
    the fingerprints of requests without one are what they were before it existed."""
    if not key:
        return None
    content = {"operation": operation, "inputs": _inputs(inputs), **fields}
    if webhook_url:
        content["webhook_url"] = webhook_url
    digest = hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    return Claim(check_key(key), digest)
