"""StorageService through a real grpc.aio server on a loopback port and a real channel."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
import tracemalloc
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from urllib.parse import parse_qs, unquote, urlsplit

import grpc
import pytest
from comfyfleet.storage.v1 import object_pb2
from comfyfleet.storage.v1 import storage_service_pb2 as pb
from google.protobuf import duration_pb2

from services.common.errors import from_rpc_error
from services.common.url_signing import download_url, sign

from .conftest import PUBLIC_URL, SIGNING_KEY, RunningStorage

pytestmark = pytest.mark.timeout(20)
MiB = 1024 * 1024


def put_requests(
    key: str,
    chunks: Iterable[bytes],
    *,
    content_type: str = "",
    max_size_bytes: int = 0,
    finish: pb.PutObjectFinish | bool = True,
) -> list[pb.PutObjectRequest]:
    """A whole PutObject stream; `finish` True = the right size, False = none, or a given one."""
    chunks = list(chunks)
    header = pb.PutObjectHeader(key=key, content_type=content_type, max_size_bytes=max_size_bytes)
    requests = [pb.PutObjectRequest(header=header), *(pb.PutObjectRequest(chunk=c) for c in chunks)]
    if finish is True:
        finish = pb.PutObjectFinish(size_bytes=sum(map(len, chunks)))
    if isinstance(finish, pb.PutObjectFinish):
        requests.append(pb.PutObjectRequest(finish=finish))
    return requests


async def put(storage: RunningStorage, key: str, data: bytes, *, content_type: str = "") -> object_pb2.ObjectRef:
    chunks = [data[i : i + MiB] for i in range(0, len(data), MiB)]
    response = await storage.stub.PutObject(iter(put_requests(key, chunks, content_type=content_type)))
    return response.object


async def get(storage: RunningStorage, request: pb.GetObjectRequest) -> tuple[object_pb2.ObjectRef, bytes]:
    messages = [m async for m in storage.stub.GetObject(request)]
    assert messages[0].WhichOneof("part") == "object"
    assert all(m.WhichOneof("part") == "chunk" for m in messages[1:])
    return messages[0].object, b"".join(m.chunk for m in messages[1:])


async def rpc_error(call: Awaitable[object] | AsyncIterable[object]) -> tuple[grpc.StatusCode, str, str]:
    """The code, reason and message a failing call ends with."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        if isinstance(call, AsyncIterable):
            [m async for m in call]
        else:
            await call
    err = from_rpc_error(caught.value)
    return caught.value.code(), err.reason, err.message


async def test_put_get_delete(storage: RunningStorage) -> None:
    data = os.urandom(3 * MiB + 5)
    ref = await put(storage, "outputs/wf1/9/ComfyUI_00001_.png", data, content_type="image/png")
    assert (ref.key, ref.size_bytes, ref.content_type) == ("outputs/wf1/9/ComfyUI_00001_.png", len(data), "image/png")
    assert ref.sha256 == hashlib.sha256(data).hexdigest()

    got, body = await get(storage, pb.GetObjectRequest(key=ref.key))
    assert (got, body) == (ref, data)
    got, body = await get(storage, pb.GetObjectRequest(key=ref.key, offset_bytes=MiB - 1, length_bytes=3))
    assert (got, body) == (ref, data[MiB - 1 : MiB + 2])

    deleted = await storage.stub.DeleteObjects(pb.DeleteObjectsRequest(keys=[ref.key, "outputs/wf1/9/nope.png"]))
    assert deleted.deleted_count == 1
    code, reason, _ = await rpc_error(storage.stub.GetObject(pb.GetObjectRequest(key=ref.key)))
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "OBJECT_NOT_FOUND")
    assert storage.files() == []


async def test_delete_by_prefix(storage: RunningStorage) -> None:
    for key in ("inputs/wf1/image/a.png", "inputs/wf1/mask/b.png", "inputs/wf2/image/c.png"):
        await put(storage, key, b"bytes")
    deleted = await storage.stub.DeleteObjects(pb.DeleteObjectsRequest(prefix="inputs/wf1/"))
    assert deleted.deleted_count == 2
    # (its metadata is an xattr of the file, or a sidecar on a filesystem without user xattrs)
    assert storage.files() in (["data/inputs/wf2/image/c.png"],
                               ["data/inputs/wf2/image/c.png", "data/inputs/wf2/image/c.png.meta.json"])
    code, reason, message = await rpc_error(storage.stub.DeleteObjects(pb.DeleteObjectsRequest(prefix="inputs/wf2")))
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "KEY_INVALID")
    assert "must end with '/'" in message


@pytest.mark.parametrize(
    ("requests", "reason"),
    [
        ([], "PUT_HEADER_MISSING"),
        ([pb.PutObjectRequest(chunk=b"data first")], "PUT_HEADER_MISSING"),
        (put_requests("inputs/wf1/p/a", [b"x"], finish=False) + put_requests("inputs/wf1/p/b", []),
         "PUT_HEADER_REPEATED"),
        # a stream that ends without its finish (a cancelled client can look like this)
        (put_requests("inputs/wf1/p/a", [b"x" * 100], finish=False), "PUT_FINISH_MISSING"),
        (put_requests("inputs/wf1/p/a", [], finish=False), "PUT_FINISH_MISSING"),
        (put_requests("inputs/wf1/p/a", [b"x" * 100], finish=pb.PutObjectFinish(size_bytes=101)), "PUT_SIZE_MISMATCH"),
        (put_requests("inputs/wf1/p/a", [b"x" * 100], finish=pb.PutObjectFinish(size_bytes=100, sha256="ab" * 32)),
         "PUT_SHA256_MISMATCH"),
        (put_requests("../etc/passwd", [b"x"]), "KEY_INVALID"),
        (put_requests("inputs/wf1/p/a", [b"x"], content_type="a\nb"), "CONTENT_TYPE_INVALID"),
    ],
)
async def test_malformed_puts_are_invalid_arguments(
    storage: RunningStorage, requests: list[pb.PutObjectRequest], reason: str
) -> None:
    code, got_reason, _ = await rpc_error(storage.stub.PutObject(iter(requests)))
    assert (code, got_reason) == (grpc.StatusCode.INVALID_ARGUMENT, reason)
    assert storage.files() == []


async def test_over_the_limit_is_resource_exhausted_and_stores_nothing(storage: RunningStorage) -> None:
    requests = put_requests("inputs/wf1/p/big.bin", [os.urandom(MiB)] * 3, max_size_bytes=2 * MiB)
    code, reason, message = await rpc_error(storage.stub.PutObject(iter(requests)))
    assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "OBJECT_TOO_LARGE")
    assert "2097152 bytes" in message
    assert storage.files() == []


async def test_presigned_url_downloads_through_a_signed_get(storage: RunningStorage) -> None:
    ref = await put(storage, "outputs/wf1/9/my image.png", b"PNG bytes", content_type="image/png")
    before = int(time.time())
    presigned = await storage.stub.PresignObject(pb.PresignObjectRequest(key=ref.key))

    url = urlsplit(presigned.url)
    assert f"{url.scheme}://{url.netloc}" == PUBLIC_URL
    assert url.path == "/v1/objects/outputs/wf1/9/my%20image.png"
    query = parse_qs(url.query)
    expires = int(query["expires"][0])
    assert before + 300 <= expires <= int(time.time()) + 300
    assert presigned.expires_at.seconds == expires

    # what the gateway does with GET {url}
    signature = pb.UrlSignature(expires_unix=expires, signature=query["signature"][0])
    request = pb.GetObjectRequest(key=unquote(url.path.removeprefix("/v1/objects/")), signature=signature)
    assert await get(storage, request) == (ref, b"PNG bytes")


async def test_url_signing_lets_the_gateway_sign_what_a_signed_get_accepts(storage: RunningStorage) -> None:
    ref = await put(storage, "outputs/wf1/9/signed here.png", b"PNG bytes", content_type="image/png")
    answer = await storage.stub.GetUrlSigning(pb.GetUrlSigningRequest())
    assert answer.HasField("gateway")  # a local directory: download URLs are the gateway's own
    signing = answer.gateway
    assert (signing.key, signing.public_url, signing.ttl_seconds) == (SIGNING_KEY, PUBLIC_URL, 300)

    # a URL made with it, as the gateway makes one, is the URL PresignObject makes ...
    expires = int(time.time()) + signing.ttl_seconds
    url = download_url(signing.public_url, ref.key, expires, sign(signing.key, ref.key, expires))
    presigned = await storage.stub.PresignObject(pb.PresignObjectRequest(key=ref.key))
    if presigned.expires_at.seconds == expires:  # (unless the second turned between the two)
        assert presigned.url == url
    # ... and downloads the object
    query = parse_qs(urlsplit(url).query)
    signature = pb.UrlSignature(expires_unix=expires, signature=query["signature"][0])
    assert await get(storage, pb.GetObjectRequest(key=ref.key, signature=signature)) == (ref, b"PNG bytes")
    forged = pb.UrlSignature(expires_unix=expires, signature=sign(b"another key" * 4, ref.key, expires))
    code, reason, _ = await rpc_error(storage.stub.GetObject(pb.GetObjectRequest(key=ref.key, signature=forged)))
    assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "URL_SIGNATURE_INVALID")


async def test_presign_ttl_from_the_request_and_its_bounds(storage: RunningStorage) -> None:
    await put(storage, "outputs/wf1/9/a.png", b"x")
    presigned = await storage.stub.PresignObject(
        pb.PresignObjectRequest(key="outputs/wf1/9/a.png", ttl=duration_pb2.Duration(seconds=60))
    )
    assert abs(presigned.expires_at.seconds - (time.time() + 60)) < 5
    for seconds in (0, -5, 8 * 24 * 3600):
        request = pb.PresignObjectRequest(key="outputs/wf1/9/a.png", ttl=duration_pb2.Duration(seconds=seconds))
        code, reason, _ = await rpc_error(storage.stub.PresignObject(request))
        assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "TTL_INVALID")
    code, reason, _ = await rpc_error(storage.stub.PresignObject(pb.PresignObjectRequest(key="outputs/wf1/9/b.png")))
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "OBJECT_NOT_FOUND")
    code, reason, _ = await rpc_error(storage.stub.PresignObject(pb.PresignObjectRequest(key="/etc/passwd")))
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "KEY_INVALID")


@pytest.mark.parametrize(
    ("key", "expires_delta", "signature_key", "expires_signed_delta", "reason"),
    [
        ("outputs/wf1/9/a.png", 60, "outputs/wf1/9/b.png", 60, "URL_SIGNATURE_INVALID"),  # other object's URL
        ("outputs/wf1/9/a.png", 3600, "outputs/wf1/9/a.png", 60, "URL_SIGNATURE_INVALID"),  # expiry pushed out
        ("outputs/wf1/9/a.png", -1, "outputs/wf1/9/a.png", -1, "URL_EXPIRED"),
        ("outputs/wf1/9/gone.png", 60, "outputs/wf1/9/a.png", 60, "URL_SIGNATURE_INVALID"),  # before the disk
    ],
)
async def test_signed_gets_are_refused_unless_valid_and_unexpired(
    storage: RunningStorage,
    key: str,
    expires_delta: int,
    signature_key: str,
    expires_signed_delta: int,
    reason: str,
) -> None:
    await put(storage, "outputs/wf1/9/a.png", b"x")
    now = int(time.time())
    signature = pb.UrlSignature(
        expires_unix=now + expires_delta,
        signature=sign(SIGNING_KEY, signature_key, now + expires_signed_delta),
    )
    code, got_reason, _ = await rpc_error(storage.stub.GetObject(pb.GetObjectRequest(key=key, signature=signature)))
    assert (code, got_reason) == (grpc.StatusCode.PERMISSION_DENIED, reason)


async def test_a_tampered_signature_is_refused(storage: RunningStorage) -> None:
    await put(storage, "outputs/wf1/9/a.png", b"x")
    presigned = await storage.stub.PresignObject(pb.PresignObjectRequest(key="outputs/wf1/9/a.png"))
    query = parse_qs(urlsplit(presigned.url).query)
    good = query["signature"][0]
    tampered = ("0" if good[10] != "0" else "1").join((good[:10], good[11:]))
    signature = pb.UrlSignature(expires_unix=int(query["expires"][0]), signature=tampered)
    request = pb.GetObjectRequest(key="outputs/wf1/9/a.png", signature=signature)
    code, reason, _ = await rpc_error(storage.stub.GetObject(request))
    assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "URL_SIGNATURE_INVALID")


async def test_a_20_mb_object_streams_through_without_being_held_whole(storage: RunningStorage) -> None:
    size = 20 * MiB
    sent = hashlib.sha256()

    async def requests() -> AsyncIterator[pb.PutObjectRequest]:
        yield pb.PutObjectRequest(header=pb.PutObjectHeader(key="outputs/wf1/9/video.mp4", max_size_bytes=size))
        for _ in range(size // MiB):
            chunk = os.urandom(MiB)
            sent.update(chunk)
            yield pb.PutObjectRequest(chunk=chunk)
        yield pb.PutObjectRequest(finish=pb.PutObjectFinish(size_bytes=size, sha256=sent.hexdigest()))

    tracemalloc.start()
    try:
        response = await storage.stub.PutObject(requests())
        _, put_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()

        received = hashlib.sha256()
        received_bytes = 0
        async for message in storage.stub.GetObject(pb.GetObjectRequest(key="outputs/wf1/9/video.mp4")):
            received.update(message.chunk)
            received_bytes += len(message.chunk)
        _, get_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert response.object.size_bytes == received_bytes == size
    assert response.object.sha256 == sent.hexdigest() == received.hexdigest()
    # client and server share this process; a copy of the whole object would be 20 MiB
    assert put_peak < 10 * MiB, f"put peak {put_peak / MiB:.1f} MiB"
    assert get_peak < 10 * MiB, f"get peak {get_peak / MiB:.1f} MiB"


async def test_a_put_cancelled_mid_stream_leaves_no_temp_file(storage: RunningStorage) -> None:
    call = storage.stub.PutObject()
    await call.write(pb.PutObjectRequest(header=pb.PutObjectHeader(key="inputs/wf1/p/upload.bin")))
    for _ in range(3):
        await call.write(pb.PutObjectRequest(chunk=os.urandom(MiB)))
    await _until(lambda: any(f.startswith("tmp/") for f in storage.files()))  # it is mid-way

    call.cancel()
    await _until(lambda: storage.files() == [])
    code, reason, _ = await rpc_error(storage.stub.GetObject(pb.GetObjectRequest(key="inputs/wf1/p/upload.bin")))
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "OBJECT_NOT_FOUND")


async def _until(condition: Callable[[], bool]) -> None:
    """Polls what the server left on disk (files give no event to wait for), up to 15 s: the
    cleanup runs in the default thread pool, which a loaded 2-core CI machine can delay."""
    for _ in range(1500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met within 15 s")


async def test_a_previous_object_survives_a_stream_that_ends_without_its_finish(storage: RunningStorage) -> None:
    old = await put(storage, "inputs/wf1/p/a.bin", b"old bytes")
    code, reason, _ = await rpc_error(
        storage.stub.PutObject(iter(put_requests("inputs/wf1/p/a.bin", [b"new, cut short"], finish=False)))
    )
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "PUT_FINISH_MISSING")
    assert await get(storage, pb.GetObjectRequest(key="inputs/wf1/p/a.bin")) == (old, b"old bytes")


async def test_a_finish_with_the_right_sha256_is_stored(storage: RunningStorage) -> None:
    data = os.urandom(1000)
    finish = pb.PutObjectFinish(size_bytes=1000, sha256=hashlib.sha256(data).hexdigest())
    response = await storage.stub.PutObject(iter(put_requests("inputs/wf1/p/a.bin", [data], finish=finish)))
    assert response.object.sha256 == finish.sha256
    assert (await get(storage, pb.GetObjectRequest(key="inputs/wf1/p/a.bin")))[1] == data
