"""Users, tokens and tier limits (API.md "User", "Errors"; ARCHITECTURE.md "Identity, tenancy, limits")."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import sqlite3
import subprocess
import sys
import time
from datetime import timedelta
from unittest import mock

from services.devrun import ROOT
from services.scheduler.admin import main as admin_main
from services.scheduler.db.identity_store import API
from tests.api.conftest import Api
from tests.api.forms import PLAIN, workflow_files


async def test_user_shows_its_tier_limits_and_usage(api: Api) -> None:
    auth = await api.user("limited", tier="free")
    await api.client.post("/v1/runner", headers=auth, json={"name": "r", "endpoint": "http://10.0.0.2:8188"})
    await api.client.post("/v1/workflow", headers=auth, data={"name": "w"}, files=workflow_files(PLAIN))
    reply = await api.client.get("/v1/user", headers=auth)
    assert reply.status_code == 200
    user = reply.json()
    assert (user["name"], user["tier"], user["email"]) == ("limited", "free", "")
    assert set(user) == {"id", "name", "email", "tier", "created_at", "updated_at", "limits"}
    assert user["limits"] == {
        "parameters_per_workflow": {"max": 10, "used": None},
        "runners": {"max": 2, "used": 1},
        "templates": {"max": 5, "used": 0},
        "concurrent_workflows": {"max": 2, "used": 1},
    }


def forbidden(limit: str, message: str, maximum: int, used: int) -> dict:  # type: ignore[type-arg]
    return {"status": 403, "message": message, "reason": "TIER_LIMIT",
            "details": [{"limit": limit, "max": maximum, "used": used}]}


async def test_over_a_tier_limit_is_403(api: Api) -> None:
    auth = await api.user("free-tier", tier="free")
    for i in range(2):
        body = {"name": f"r{i}", "endpoint": "http://10.0.0.3:8188"}
        assert (await api.client.post("/v1/runner", headers=auth, json=body)).status_code == 201
    reply = await api.client.post("/v1/runner", headers=auth, json={"name": "r3", "endpoint": "http://10.0.0.3"})
    assert reply.json() == forbidden("runners", "Runner limit exceeded for your tier", 2, 2)

    template = {"name": (None, "t"), "description": (None, "d"), "body": ("b.json", json.dumps(PLAIN).encode())}
    for _ in range(5):
        assert (await api.client.post("/v1/template", headers=auth, files=template)).status_code == 201
    reply = await api.client.post("/v1/template", headers=auth, files=template)
    assert reply.json() == forbidden("templates", "template limit exceeded for your tier", 5, 5)

    many = {str(i): {"class_type": "T", "inputs": {"v": f"$text(p{i}, x)"}} for i in range(11)}
    reply = await api.client.post("/v1/workflow", headers=auth, data={"name": "big"}, files=workflow_files(many))
    assert reply.status_code == 403
    assert reply.json() == forbidden("parameters_per_workflow", "workflow parameter limit exceeded for your tier",
                                     10, 11)
    for _ in range(2):
        reply = await api.client.post("/v1/workflow", headers=auth, data={"name": "w"}, files=workflow_files(PLAIN))
        assert reply.status_code == 201
    reply = await api.client.post("/v1/workflow", headers=auth, data={"name": "w"}, files=workflow_files(PLAIN))
    assert reply.json() == forbidden("concurrent_workflows", "concurrent workflow limit exceeded for your tier", 2, 2)
    # a finished workflow no longer counts
    first = (await api.client.get("/v1/workflow", headers=auth)).json()["workflows"][0]["id"]
    assert (await api.client.post(f"/v1/workflow/{first}/cancel", headers=auth)).status_code == 200
    reply = await api.client.post("/v1/workflow", headers=auth, data={"name": "w"}, files=workflow_files(PLAIN))
    assert reply.status_code == 201


async def test_bad_tokens_are_401(api: Api) -> None:
    reply = await api.client.get("/v1/user")
    assert reply.json() == {"status": 401, "message": "missing bearer token", "reason": "MISSING_TOKEN"}
    assert reply.headers["www-authenticate"] == "Bearer"
    reply = await api.client.get("/v1/user", headers={"Authorization": "Bearer cf_unknown"})
    assert reply.json() == {"status": 401, "message": "invalid token", "reason": "TOKEN_INVALID"}
    user = await api.scheduler.identity.create_user("short-lived")
    token = await api.scheduler.identity.issue_token(user.id, API, timedelta(milliseconds=50))
    assert (await api.client.get("/v1/user", headers={"Authorization": f"Bearer {token}"})).status_code == 200
    await asyncio.sleep(0.1)
    reply = await api.client.get("/v1/user", headers={"Authorization": f"Bearer {token}"})
    assert reply.json() == {"status": 401, "message": "token expired", "reason": "TOKEN_EXPIRED"}


async def test_a_token_revoked_by_the_scheduler_itself_is_refused_at_once(api: Api) -> None:
    user = await api.scheduler.identity.create_user("revoked-here")
    token = await api.scheduler.identity.issue_token(user.id, API)
    auth = {"Authorization": f"Bearer {token}"}
    assert (await api.client.get("/v1/user", headers=auth)).status_code == 200  # now in the token cache
    await api.scheduler.identity.revoke_token(token)
    reply = await api.client.get("/v1/user", headers=auth)
    assert reply.json() == {"status": 401, "message": "token revoked", "reason": "TOKEN_REVOKED"}


def admin_process(api: Api, *args: str) -> str:
    """`python -m services.scheduler admin ...` as a process on the scheduler's database."""
    env = {**os.environ, "SCHEDULER_DATABASE_URL": api.scheduler.settings.database_url}
    done = subprocess.run([sys.executable, "-m", "services.scheduler", "admin", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


def admin(api: Api, *args: str) -> str:
    """The same command's main, in a thread of this process (a process start costs seconds)."""
    out = io.StringIO()
    with mock.patch.dict(os.environ, {"SCHEDULER_DATABASE_URL": api.scheduler.settings.database_url}), \
            contextlib.redirect_stdout(out):
        assert admin_main(list(args)) == 0
    return out.getvalue()


async def test_admin_command_creates_users_and_tokens_and_revokes_them(api: Api) -> None:
    out = await asyncio.to_thread(admin_process, api, "create-user", "grace", "--email", "grace@example.com",
                                  "--tier", "pro")
    assert out.startswith("user ") and out.strip().endswith("grace tier=pro")
    out = await asyncio.to_thread(admin, api, "create-token", "grace", "--name", "laptop", "--expires-in-days", "30")
    header, token = out.strip().splitlines()
    token_id = header.split()[2]
    assert token.startswith("cf_") and len(token) > 40
    auth = {"Authorization": f"Bearer {token}"}
    user = (await api.client.get("/v1/user", headers=auth)).json()
    assert (user["name"], user["email"], user["tier"]) == ("grace", "grace@example.com", "pro")

    database = api.scheduler.settings.database_url.split(":///", 1)[1]
    with sqlite3.connect(database) as db:
        cells = [str(cell) for row in db.execute("SELECT * FROM tokens") for cell in row]
    assert not any(token in cell or token[3:] in cell for cell in cells)

    listing = await asyncio.to_thread(admin, api, "list-tokens", "grace")
    assert listing.startswith(f"{token_id} api active name='laptop'") and "last_used=never" not in listing

    out = await asyncio.to_thread(admin, api, "revoke-token", token_id)
    assert out.strip() == f"revoked token {token_id}"
    # Revoked by another process: the scheduler trusts its cached answer for up to
    # token_cache_seconds (1 s here), then refuses the token.
    deadline = time.monotonic() + api.scheduler.settings.token_cache_seconds + 2
    while (reply := await api.client.get("/v1/user", headers=auth)).status_code == 200:
        assert time.monotonic() < deadline, "the revoked token is still accepted"
        await asyncio.sleep(0.1)
    assert reply.status_code == 401
    assert reply.json() == {"status": 401, "message": "token revoked", "reason": "TOKEN_REVOKED"}
    assert " revoked " in await asyncio.to_thread(admin, api, "list-tokens", "grace")
