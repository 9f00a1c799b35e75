"""Bad credentials: forged, malformed, expired, revoked, of another kind, of another tenant.
Each is a 401 (404 for another tenant's resource: absent or not yours) with the API.md body."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import pytest

from services.scheduler.db.identity_store import API
from tests.api.conftest import Api
from tests.hostile.hostile import PLAIN, expect

# (id, Authorization header value, reason, message)
BAD = [
    ("forged-random", "Bearer cf_" + "A" * 43, "TOKEN_INVALID", "invalid token"),
    ("forged-sql", "Bearer ' OR '1'='1", "MALFORMED_TOKEN", "'Bearer <token>'"),
    ("forged-sql-no-spaces", "Bearer 'OR'1'='1'--", "TOKEN_INVALID", "invalid token"),
    ("basic-scheme", "Basic YWRtaW46YWRtaW4=", "MALFORMED_TOKEN", "'Bearer <token>'"),
    ("bearer-without-token", "Bearer", "MALFORMED_TOKEN", "'Bearer <token>'"),
    ("token-without-scheme", "cf_abcdef", "MALFORMED_TOKEN", "'Bearer <token>'"),
    ("non-ascii-token", "Bearer cf_\u00e9\u00e9", "MALFORMED_TOKEN", "'Bearer <token>'"),
    # Refused by the gateway itself: past gRPC's metadata soft limit the call would be refused
    # at random (413 TOO_LARGE) instead of answered.
    ("very-long-token", "Bearer " + "x" * 8000, "TOKEN_INVALID", "invalid token"),
    ("long-token", "Bearer cf_" + "x" * 1100, "TOKEN_INVALID", "invalid token"),
]


@pytest.mark.parametrize(("value", "reason", "message"), [pytest.param(v, r, m, id=i) for i, v, r, m in BAD])
async def test_bad_token_is_401(api: Api, value: str, reason: str, message: str) -> None:
    auth = await api.user("tokens-control")
    reply = await api.client.get("/v1/workflow", headers=[(b"Authorization", value.encode("latin-1"))])
    await expect(api, reply, auth, 401, reason, message)
    assert reply.headers["www-authenticate"] == "Bearer"


async def test_expired_token_is_401(api: Api) -> None:
    user = await api.scheduler.identity.create_user("tokens-expired")
    token = await api.scheduler.identity.issue_token(user.id, API, timedelta(milliseconds=50))
    await asyncio.sleep(0.1)
    reply = await api.client.post("/v1/workflow", headers={"Authorization": f"Bearer {token}"}, data={"name": "x"},
                                  files={"workflow_json": ("wf.json", json.dumps(PLAIN).encode())})
    await expect(api, reply, await api.user("tokens-c1"), 401, "TOKEN_EXPIRED", "token expired")


async def test_revoked_token_is_401(api: Api) -> None:
    user = await api.scheduler.identity.create_user("tokens-revoked")
    token = await api.scheduler.identity.issue_token(user.id, API)
    await api.scheduler.identity.revoke_token(token)
    reply = await api.client.get("/v1/user", headers={"Authorization": f"Bearer {token}"})
    await expect(api, reply, await api.user("tokens-c2"), 401, "TOKEN_REVOKED", "token revoked")


@pytest.mark.parametrize("kind", ["runner", "pool"])
async def test_a_token_of_another_kind_is_not_an_api_token(api: Api, kind: str) -> None:
    user = await api.scheduler.identity.create_user(f"tokens-{kind}")
    token = await api.scheduler.identity.issue_token(user.id, kind)
    reply = await api.client.get("/v1/user", headers={"Authorization": f"Bearer {token}"})
    await expect(api, reply, await api.user("tokens-c3"), 401, "TOKEN_INVALID", "invalid token")


@pytest.mark.parametrize(("method", "path", "reason"), [
    ("GET", "/v1/workflow/{w}", "WORKFLOW_NOT_FOUND"),
    ("POST", "/v1/workflow/{w}/cancel", "WORKFLOW_NOT_FOUND"),
    ("DELETE", "/v1/workflow/{w}", "WORKFLOW_NOT_FOUND"),
    ("POST", "/v1/workflow/{w}/rerun", "WORKFLOW_NOT_FOUND"),
    ("GET", "/v1/runner/{r}", "RUNNER_NOT_FOUND"),
    ("PUT", "/v1/runner/{r}", "RUNNER_NOT_FOUND"),
], ids=["get-workflow", "cancel-workflow", "delete-workflow", "rerun-workflow", "get-runner", "put-runner"])
async def test_another_tenants_token_sees_nothing(api: Api, method: str, path: str, reason: str) -> None:
    owner, other = await api.user("tokens-owner"), await api.user("tokens-other")
    created = await api.client.post("/v1/workflow", headers=owner, data={"name": "mine"},
                                    files={"workflow_json": ("wf.json", json.dumps(PLAIN).encode())})
    runner = await api.client.post("/v1/runner", headers=owner, json={"name": "r", "endpoint": "http://10.0.0.5:8188"})
    url = path.format(w=created.json()["id"], r=runner.json()["id"])
    reply = await api.client.request(method, url, headers=other, json={"name": "stolen"} if method == "PUT" else None)
    await expect(api, reply, other, 404, reason, "not found")
    assert (await api.client.get(f"/v1/workflow/{created.json()['id']}", headers=owner)).json()["name"] == "mine"
