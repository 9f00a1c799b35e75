"""Runners through the public API (API.md "Runners"): register, list, read, update, delete,
interrupt, runner tokens; header values masked everywhere."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3

import pytest
from comfyfleet.runner.v1 import runner_event_pb2 as ev

from tests.api.conftest import Api
from tests.scheduler.harness import FakeRunner

NEW = {"name": "Production GPU Runner", "endpoint": "https://my-comfy.example.com",
       "headers": {"Authorization": "Bearer secret_token", "X-Key": "abc123"}, "tags": ["production", "gpu-a100"]}


async def register(api: Api, auth: dict[str, str], **changes: object) -> dict:  # type: ignore[type-arg]
    reply = await api.client.post("/v1/runner", headers=auth, json={**NEW, **changes})
    assert reply.status_code == 201, reply.text
    return reply.json()  # type: ignore[no-any-return]


async def test_register_read_and_list_with_masked_headers(api: Api) -> None:
    auth = await api.user("runner-owner")
    user = (await api.client.get("/v1/user", headers=auth)).json()
    runner = await register(api, auth)
    assert runner == {
        "id": runner["id"], "user_id": user["id"], "name": "Production GPU Runner", "status": "active",
        "endpoint": "https://my-comfy.example.com", "tags": ["production", "gpu-a100"],
        "headers": {"Authorization": "Bearer ****", "X-Key": "****"},
        "created_at": runner["created_at"], "updated_at": runner["created_at"],
        "connection": "offline", "last_seen_at": None, "slots": 1, "in_flight": 0, "comfyui_version": None,
    }
    assert (await api.client.get(f"/v1/runner/{runner['id']}", headers=auth)).json() == runner

    agent = await api.runner_for(auth, "self-registered", "gpu")
    listed = (await api.client.get("/v1/runner", headers=auth)).json()
    assert listed["total"] == 2
    first, second = listed["runners"]
    assert second == runner
    assert (first["name"], first["connection"], first["endpoint"], first["comfyui_version"]) == (
        "self-registered", "online", None, "0.3.40")
    assert first["last_seen_at"] is not None
    page = (await api.client.get("/v1/runner", headers=auth, params={"per_page": 1, "page": 2})).json()
    assert (page["total"], [r["id"] for r in page["runners"]]) == (2, [runner["id"]])
    await agent.drop()


@pytest.mark.parametrize(("body", "status", "message", "field"), [
    ({"name": None}, 400, "missing required field 'name'", "name"),
    ({"endpoint": None}, 400, "missing required field 'endpoint'", "endpoint"),
    ({"name": "   "}, 400, "name cannot be empty", "name"),
    ({"name": "x" * 101}, 400, "name must be at most 100 characters", "name"),
    ({"endpoint": "ftp://host/x"}, 400, "invalid endpoint URL format", "endpoint"),
    ({"endpoint": "not a url"}, 400, "invalid endpoint URL format", "endpoint"),
    ({"endpoint": "http://host:99999"}, 400, "invalid endpoint URL format", "endpoint"),
    ({"headers": ["Authorization"]}, 400, "invalid headers format: an object of header name -> string value",
     "headers"),
    ({"headers": {"Bad Name": "x"}}, 400, "invalid headers format: 'Bad Name' is not a header name", "headers"),
    ({"tags": [f"t{i}" for i in range(11)]}, 400, "at most 10 tags are allowed, got 11", "tags"),
    ({"tags": "gpu"}, 400, "tags must be an array of strings", "tags"),
    ({"color": "red"}, 400, "unknown field 'color': expected name, endpoint, headers, tags", "color"),
])
async def test_register_refuses_bad_fields(api: Api, body: dict, status: int, message: str,  # type: ignore[type-arg]
                                           field: str) -> None:
    auth = await api.user("bad-fields")
    # None = the field is left out
    payload = {k: v for k, v in {"name": "r", "endpoint": "http://10.0.0.1:8188", **body}.items() if v is not None}
    reply = await api.client.post("/v1/runner", headers=auth, json=payload)
    assert reply.status_code == status
    got = reply.json()
    assert (got["status"], got["message"], got["details"][0]["field"]) == (status, message, field)
    assert (await api.client.get("/v1/runner", headers=auth)).json()["total"] == 0


async def test_register_needs_a_token_and_json(api: Api) -> None:
    reply = await api.client.post("/v1/runner", json=NEW)
    assert reply.status_code == 401 and reply.json()["status"] == 401
    auth = await api.user("json-body")
    reply = await api.client.post("/v1/runner", headers=auth, content=b"{nope")
    assert reply.json() == {"status": 400, "message": "the request body is not valid JSON", "reason": "INVALID_JSON"}
    reply = await api.client.post("/v1/runner", headers=auth, content=b"x" * (300 * 1024))
    assert reply.status_code == 413 and reply.json()["status"] == 413


async def test_update_changes_only_what_is_sent(api: Api) -> None:
    auth = await api.user("updater")
    runner = await register(api, auth)
    url = f"/v1/runner/{runner['id']}"
    reply = await api.client.put(url, headers=auth, json={"name": "renamed"})
    assert reply.status_code == 200
    updated = reply.json()
    assert updated["name"] == "renamed"
    assert {k: v for k, v in updated.items() if k not in ("name", "updated_at")} == {
        k: v for k, v in runner.items() if k not in ("name", "updated_at")}

    reply = await api.client.put(url, headers=auth, json={"headers": {"Authorization": "Basic dXNlcjpwdw=="},
                                                          "tags": [], "status": "disabled"})
    updated = reply.json()
    assert (updated["headers"], updated["tags"], updated["status"]) == (
        {"Authorization": "Basic ****"}, [], "disabled")
    listed = (await api.client.get("/v1/runner", headers=auth, params={"status": "disabled"})).json()
    assert [r["id"] for r in listed["runners"]] == [runner["id"]]
    assert (await api.client.get("/v1/runner", headers=auth, params={"status": "active"})).json()["total"] == 0

    reply = await api.client.put(url, headers=auth, json={"status": "paused"})
    assert reply.json() == {"status": 400, "message": "status must be active or disabled", "reason": "INVALID_FIELD",
                            "details": [{"field": "status", "value": "paused"}]}
    reply = await api.client.put(url, headers=auth, json={"endpoint": "gopher://x"})
    assert reply.json()["message"] == "invalid endpoint URL format"
    stranger = await api.user("not-the-updater")
    reply = await api.client.put(url, headers=stranger, json={"name": "mine"})
    assert reply.status_code == 404
    assert reply.json() == {"status": 404, "message": "runner not found", "reason": "RUNNER_NOT_FOUND",
                            "details": [{"id": runner["id"]}]}
    assert (await api.client.get(url, headers=auth)).json()["name"] == "renamed"


async def test_a_disabled_runner_gets_no_work_until_enabled(api: Api) -> None:
    auth = await api.user("disabler")
    agent = await api.runner_for(auth, "box", "gpu")
    runner_id = (await api.client.get("/v1/runner", headers=auth)).json()["runners"][0]["id"]
    reply = await api.client.put(f"/v1/runner/{runner_id}", headers=auth, json={"status": "disabled"})
    assert reply.status_code == 200
    files = {"workflow_json": ("wf.json", b'{"1": {"class_type": "SaveImage", "inputs": {}}}', "application/json")}
    reply = await api.client.post("/v1/workflow", headers=auth, data={"name": "wait", "tags": "gpu"}, files=files)
    assert reply.status_code == 400 and reply.json()["reason"] == "NO_MATCHING_RUNNER"
    reply = await api.client.post("/v1/workflow", headers=auth, data={"name": "wait"}, files=files)
    assert reply.status_code == 201
    await agent.nothing_for(0.3)
    assert (await api.client.put(f"/v1/runner/{runner_id}", headers=auth, json={"status": "active"})).status_code == 200
    assert (await agent.assignment()).workflow_id == reply.json()["id"]
    await agent.drop()


async def test_delete_sends_its_workflows_back_and_interrupt_stops_the_running_one(api: Api) -> None:
    auth = await api.user("deleter-of-runners")
    agent = await api.runner_for(auth, "busy", "gpu")
    runner_id = (await api.client.get("/v1/runner", headers=auth)).json()["runners"][0]["id"]
    files = {"workflow_json": ("wf.json", b'{"1": {"class_type": "SaveImage", "inputs": {}}}', "application/json")}
    wf = (await api.client.post("/v1/workflow", headers=auth, data={"name": "w"}, files=files)).json()
    assignment = await agent.assignment()
    agent.send(wf["id"], assignment.attempt, uploaded=ev.Uploaded())
    agent.send(wf["id"], assignment.attempt, running=ev.Running(prompt_id="p"))
    for _ in range(50):
        record = (await api.client.get(f"/v1/workflow/{wf['id']}", headers=auth)).json()
        if record["status"] == "running":
            break
        await asyncio.sleep(0.02)
    assert record["status"] == "running"
    got = (await api.client.get(f"/v1/runner/{runner_id}", headers=auth)).json()
    assert (got["connection"], got["in_flight"]) == ("online", 1)

    stranger = await api.user("not-the-interrupter")
    assert (await api.client.post(f"/v1/runner/{runner_id}/interrupt", headers=stranger)).status_code == 404
    reply = await api.client.post(f"/v1/runner/{runner_id}/interrupt", headers=auth)
    assert reply.status_code == 200 and reply.json() == {"workflow_ids": [wf["id"]]}
    cancel = await agent.next()
    assert (cancel.WhichOneof("message"), cancel.cancel.workflow_id) == ("cancel", wf["id"])

    assert (await api.client.delete(f"/v1/runner/{runner_id}", headers=stranger)).status_code == 404
    reply = await api.client.delete(f"/v1/runner/{runner_id}", headers=auth)
    assert reply.status_code == 204
    assert (await api.client.get(f"/v1/runner/{runner_id}", headers=auth)).status_code == 404
    assert (await api.client.get("/v1/runner", headers=auth)).json()["total"] == 0
    await agent.drop()


async def test_interrupt_of_an_offline_runner_is_409(api: Api) -> None:
    auth = await api.user("offline-owner")
    runner = await register(api, auth)
    reply = await api.client.post(f"/v1/runner/{runner['id']}/interrupt", headers=auth)
    assert reply.json() == {"status": 409, "message": "runner is offline", "reason": "RUNNER_OFFLINE",
                            "details": [{"id": runner["id"]}]}


async def test_runner_token_is_shown_once_stored_as_a_hash_and_lets_an_agent_in(api: Api, tmp_path_factory:
                                                                               pytest.TempPathFactory) -> None:
    auth = await api.user("token-maker")
    reply = await api.client.post("/v1/runner-token", headers=auth)
    assert reply.status_code == 201
    token = reply.json()["token"]
    assert token.startswith("cf_") and len(token) > 40 and reply.json()["expires_at"] is None
    assert reply.headers["cache-control"] == "no-store"

    agent = FakeRunner(api.scheduler_address, token, "via-token", ["x"], 2, ())
    await agent.connect()
    listed = (await api.client.get("/v1/runner", headers=auth)).json()
    assert [(r["name"], r["slots"], r["connection"]) for r in listed["runners"]] == [("via-token", 2, "online")]
    await agent.drop()
    # the token cannot be used as an API token
    assert (await api.client.get("/v1/user", headers={"Authorization": f"Bearer {token}"})).status_code == 401

    database = api.scheduler.settings.database_url.split(":///", 1)[1]
    with sqlite3.connect(database) as db:
        rows = [tuple(map(str, r)) for r in db.execute("SELECT * FROM tokens")]
    assert rows and not any(token in value for row in rows for value in row)
    assert any(hashlib.sha256(token.encode()).hexdigest() in row for row in rows)

    reply = await api.client.post("/v1/runner-token", headers=auth, json={"ttl_seconds": 3600})
    assert reply.status_code == 201 and reply.json()["expires_at"].endswith("Z")
    reply = await api.client.post("/v1/runner-token", headers=auth, json={"ttl_seconds": "soon"})
    assert reply.json() == {"status": 400, "message": "ttl_seconds must be an integer", "reason": "INVALID_FIELD",
                            "details": [{"field": "ttl_seconds"}]}
