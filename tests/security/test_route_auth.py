"""Every route of the gateway requires a token, except an explicit allow-list.

The routes come from services/gateway/app.py ROUTES, every path and every method, so a route
added without auth fails this test until it is either protected or allow-listed here. A
protected route answers 401 with API.md's error body without a token, with an unknown one
and with a malformed Authorization header. Public: health, readiness, metrics, the OpenAPI
document and the dashboard's static files. Downloads (/v1/objects/...) take no token: their
HMAC signature is the credential, so a tampered URL gets 403.
"""

from __future__ import annotations

import re
import uuid
from urllib.parse import parse_qs, urlencode, urlsplit

import grpc
import httpx
import pytest
from comfyfleet.storage.v1 import storage_service_pb2, storage_service_pb2_grpc
from starlette.routing import BaseRoute, Route

from services.devrun import Suite
from services.gateway.app import ROUTES
from services.gateway.dashboard import DashboardRoute

PUBLIC = {("/healthz", "GET"), ("/readyz", "GET"), ("/metrics", "GET"), ("/openapi.json", "GET")}
SIGNED = "/v1/objects/{key:path}"  # the signature is the credential
_PARAM = re.compile(r"{([a-z_]+)(?::([a-z]+))?}")


def concrete(path: str) -> str:
    """The route's path with its parameters filled in (a fresh UUID, or an object key)."""
    return _PARAM.sub(lambda m: "inputs/x/photo/a.png" if m.group(2) == "path" else str(uuid.uuid4()), path)


def endpoints(routes: list[BaseRoute]) -> list[tuple[str, str]]:
    """(path template, method) of every route, HEAD included where Starlette adds it."""
    out: list[tuple[str, str]] = []
    for route in routes:
        if isinstance(route, DashboardRoute):
            continue  # static files, no token (API.md); checked below
        assert isinstance(route, Route), f"a route of an unknown kind: {route!r}; check its auth here"
        out += [(route.path, method) for method in sorted(route.methods or ())]
    return out


PROTECTED = [(path, method) for path, method in endpoints(ROUTES)
             if (path, method if method != "HEAD" else "GET") not in PUBLIC and path != SIGNED]
BAD_HEADERS = {"none": {}, "unknown token": {"Authorization": "Bearer cf_" + "0" * 40},
               "malformed": {"Authorization": "Basic dXNlcjpwYXNz"}, "bearer alone": {"Authorization": "Bearer"}}


def test_the_walk_sees_the_whole_api() -> None:
    # a guard on the walk itself: it must not silently find nothing
    assert len(PROTECTED) >= 25 and ("/v1/workflow", "POST") in PROTECTED and ("/v1/user", "GET") in PROTECTED


@pytest.mark.parametrize("header", list(BAD_HEADERS))
@pytest.mark.parametrize(("path", "method"), PROTECTED, ids=[f"{m} {p}" for p, m in PROTECTED])
def test_every_protected_route_answers_401_without_a_valid_token(
        suite: Suite, path: str, method: str, header: str) -> None:
    reply = httpx.request(method, suite.gateway_url + concrete(path), headers=BAD_HEADERS[header], timeout=10)
    assert reply.status_code == 401, (reply.status_code, reply.text)
    if method == "HEAD":
        return
    body = reply.json()
    assert set(body) <= {"status", "message", "reason", "details"} and body["status"] == 401, body
    assert body["message"] and body["reason"], body
    assert reply.headers.get("www-authenticate", "").lower().startswith("bearer")


def test_the_public_routes_answer_without_a_token(suite: Suite) -> None:
    for path, _ in sorted(PUBLIC):
        assert httpx.get(suite.gateway_url + path, timeout=10).status_code == 200, path
    dashboard = next(r for r in ROUTES if isinstance(r, DashboardRoute))
    for path in ["/", *sorted(dashboard.files)]:
        assert httpx.get(suite.gateway_url + path, timeout=10).status_code == 200, path


def test_a_tampered_or_unsigned_object_url_is_refused(suite: Suite) -> None:
    key = f"outputs/{uuid.uuid4()}/1/secret.png"
    auth = (("authorization", f"Bearer {suite.service_token}"),)
    with grpc.insecure_channel(f"127.0.0.1:{suite.storage_port}") as channel:
        stub = storage_service_pb2_grpc.StorageServiceStub(channel)
        stub.PutObject(iter([
            storage_service_pb2.PutObjectRequest(header=storage_service_pb2.PutObjectHeader(key=key,
                                                                                            content_type="image/png")),
            storage_service_pb2.PutObjectRequest(chunk=b"tenant data"),
            storage_service_pb2.PutObjectRequest(finish=storage_service_pb2.PutObjectFinish(size_bytes=11)),
        ]), metadata=auth, timeout=10)
        url = stub.PresignObject(storage_service_pb2.PresignObjectRequest(key=key), metadata=auth, timeout=10).url
    signed = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(signed.query).items()}
    base = suite.gateway_url + signed.path

    good = httpx.get(f"{base}?{signed.query}", timeout=10)
    assert good.status_code == 200 and good.content == b"tenant data"  # the control: the real URL works

    flipped = query["signature"][:-1] + ("0" if query["signature"][-1] != "0" else "1")
    tampered = {
        "signature": f"{base}?{urlencode({**query, 'signature': flipped})}",
        "expires": f"{base}?{urlencode({**query, 'expires': str(int(query['expires']) + 3600)})}",
        "key": suite.gateway_url + signed.path.replace("secret.png", "other.png") + f"?{signed.query}",
    }
    for what, bad in tampered.items():
        reply = httpx.get(bad, timeout=10)
        assert reply.status_code == 403, (what, reply.status_code, reply.text)
        assert reply.json()["status"] == 403 and reply.json()["reason"], reply.text
    # without a signature at all: refused as malformed (400, tests/gateway/test_objects.py),
    # and a valid API token is no substitute for the signature
    for headers in ({}, {"Authorization": f"Bearer {suite.token}"}):
        reply = httpx.get(base, headers=headers, timeout=10)
        assert reply.status_code == 400 and reply.json()["reason"] == "INVALID_SIGNED_URL", reply.text
