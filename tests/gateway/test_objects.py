"""GET /v1/objects/{key}: signed downloads streamed from storage."""

from __future__ import annotations

import time

import pytest

from tests.gateway.conftest import Stack
from tests.gateway.fakes import GET_CHUNK_BYTES, StoredObject, sign

KEY = "outputs/7c9e6679-7425-40de-944b-e07fc1f90ae7/9/img_00001.png"
DATA = bytes(range(256)) * 1000  # 250 KiB: several GetObject chunks


def signed(key: str = KEY, expires: int | None = None) -> str:
    expires = expires if expires is not None else int(time.time()) + 60
    return f"/v1/objects/{key}?expires={expires}&signature={sign(key, expires)}"


async def test_a_good_signature_streams_the_object(stack: Stack) -> None:
    stack.storage.objects[KEY] = StoredObject(DATA, "image/png", 1)
    assert len(DATA) > 3 * GET_CHUNK_BYTES
    reply = await stack.client.get(signed())  # no Authorization: the signature is the credential
    assert reply.status_code == 200
    assert reply.content == DATA
    assert reply.headers["content-type"] == "image/png"
    assert reply.headers["content-length"] == str(len(DATA))
    assert reply.headers["content-disposition"] == 'attachment; filename="img_00001.png"'
    assert reply.headers["x-content-type-options"] == "nosniff"


async def test_non_ascii_names_get_an_rfc6266_filename(stack: Stack) -> None:
    key = "inputs/x/photo/caf\u00e9 \"1\".txt"
    stack.storage.objects[key] = StoredObject(b"hi", "", 1)
    reply = await stack.client.get(signed(key))
    assert reply.status_code == 200 and reply.content == b"hi"
    assert reply.headers["content-type"] == "application/octet-stream"
    assert reply.headers["content-disposition"] == (
        "attachment; filename=\"caf_ _1_.txt\"; filename*=UTF-8''caf%C3%A9%20%221%22.txt")


@pytest.mark.parametrize(
    "path",
    [f"/v1/objects/{KEY}?expires=4102444800&signature={'0' * 64}",  # wrong signature
     signed(expires=int(time.time()) - 10)],  # expired
    ids=["wrong", "expired"],
)
async def test_a_bad_signature_is_403(stack: Stack, path: str) -> None:
    stack.storage.objects[KEY] = StoredObject(DATA, "image/png", 1)
    reply = await stack.client.get(path)
    assert reply.status_code == 403
    assert reply.json() == {"status": 403, "message": "invalid or expired signature", "reason": "BAD_SIGNATURE"}


async def test_a_missing_object_is_404(stack: Stack) -> None:
    reply = await stack.client.get(signed())
    assert reply.status_code == 404 and reply.json()["reason"] == "OBJECT_NOT_FOUND"


@pytest.mark.parametrize(
    ("query", "field"),
    [("", "expires"), ("?signature=abc", "expires"), ("?expires=soon&signature=abc", "expires"),
     ("?expires=123", "signature"), ("?expires=123&signature=not-hex!", "signature")],
)
async def test_missing_or_malformed_parameters_are_400(stack: Stack, query: str, field: str) -> None:
    reply = await stack.client.get(f"/v1/objects/{KEY}{query}")
    assert reply.status_code == 400
    error = reply.json()
    assert error["reason"] == "INVALID_SIGNED_URL" and error["details"] == [{"field": field}]
