"""Rate limit per token (429 + Retry-After) and Idempotency-Key on create, rerun, template run."""

from __future__ import annotations

import asyncio
import json

from tests.api.conftest import Api
from tests.api.forms import GRAPH, PLAIN, PNG, workflow_files


async def test_rate_limit_per_token(api: Api) -> None:
    alice, bob = await api.user("rate-alice"), await api.user("rate-bob")
    async with api.gateway(rate_limit_requests=3, rate_limit_window_seconds=1.0) as client:
        for _ in range(3):
            assert (await client.get("/v1/workflow", headers=alice)).status_code == 200
        reply = await client.get("/v1/user", headers=alice)
        assert reply.status_code == 429
        assert reply.json() == {"status": 429, "message": "rate limit exceeded: 3 requests per 1 seconds",
                                "reason": "RATE_LIMITED"}
        assert reply.headers["retry-after"] == "1"
        # another token has its own budget; health checks are not limited
        assert (await client.get("/v1/user", headers=bob)).status_code == 200
        for _ in range(5):
            assert (await client.get("/healthz")).status_code == 200
        await asyncio.sleep(1.05)
        assert (await client.get("/v1/user", headers=alice)).status_code == 200


async def test_the_same_key_and_request_replays_the_first_answer(api: Api) -> None:
    auth = await api.user("idempotent")
    key = {**auth, "Idempotency-Key": "order-1"}

    async def create(headers: dict[str, str], name: str = "once"):  # type: ignore[no-untyped-def]
        return await api.client.post("/v1/workflow", headers=headers, data={"name": name, "$prefix": "p"},
                                     files=workflow_files(PLAIN))

    first = await create(key)
    assert first.status_code == 201
    await api.client.post(f"/v1/workflow/{first.json()['id']}/cancel", headers=auth)  # its state moves on
    again = await create(key)
    assert (again.status_code, again.json()) == (201, first.json())
    assert again.json()["status"] == "accepted"  # the first answer, not the current state
    assert (await api.client.get("/v1/workflow", headers=auth)).json()["total"] == 1

    reply = await create(key, name="something else")
    assert reply.status_code == 409
    assert reply.json() == {"status": 409, "message": "Idempotency-Key was already used with a different request",
                            "reason": "IDEMPOTENCY_KEY_REUSED", "details": [{"field": "Idempotency-Key"}]}
    # keys are per user
    other = await api.user("idempotent-too")
    assert (await create({**other, "Idempotency-Key": "order-1"})).json()["id"] != first.json()["id"]
    reply = await create({**auth, "Idempotency-Key": "x" * 256})
    assert reply.status_code == 400 and reply.json()["reason"] == "INVALID_IDEMPOTENCY_KEY"
    assert (await api.client.get("/v1/workflow", headers=auth)).json()["total"] == 1


async def test_keys_on_rerun_and_template_run(api: Api) -> None:
    auth = await api.user("idempotent-runs")
    photo = {"$photo": ("cat.png", PNG, "image/png")}
    source = (await api.client.post("/v1/workflow", headers=auth, data={"name": "src"},
                                    files=workflow_files(GRAPH, **photo))).json()
    headers = {**auth, "Idempotency-Key": "rerun-1"}
    url = f"/v1/workflow/{source['id']}/rerun"
    first = await api.client.post(url, headers=headers, files={"$prefix": (None, "a")})
    again = await api.client.post(url, headers=headers, files={"$prefix": (None, "a")})
    assert first.status_code == again.status_code == 201 and first.json() == again.json()
    assert (await api.client.post(url, headers=headers, files={"$prefix": (None, "b")})).status_code == 409

    template = (await api.client.post("/v1/template", headers=auth, files={
        "name": (None, "t"), "description": (None, "d"), "body": ("b.json", json.dumps(GRAPH).encode())})).json()
    headers = {**auth, "Idempotency-Key": "run-1"}
    url = f"/v1/template/{template['id']}/run"
    before = {p.name for p in (api.objects_dir / "inputs").iterdir()}
    first = await api.client.post(url, headers=headers, files=photo)
    again = await api.client.post(url, headers=headers, files=photo)
    assert first.status_code == again.status_code == 201 and first.json() == again.json()
    assert (await api.client.get("/v1/workflow", headers=auth)).json()["total"] == 3
    # the replayed run's upload was deleted: only the first run's inputs are new
    after = {p.name for p in (api.objects_dir / "inputs").iterdir() if any(p.iterdir())}
    assert after - before == {first.json()["id"]}
