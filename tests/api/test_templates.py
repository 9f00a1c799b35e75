"""Templates through the public API (API.md "Templates"): save, list, read, update, delete, run."""

from __future__ import annotations

import json

import pytest

from tests.api.conftest import Api
from tests.api.forms import GRAPH, PLAIN, PNG

FORM = {"name": (None, "Portrait"), "description": (None, "A photo, restyled"),
        "body": ("portrait.json", json.dumps(GRAPH).encode(), "application/json")}


async def save(api: Api, auth: dict[str, str], **changes: object) -> dict:  # type: ignore[type-arg]
    reply = await api.client.post("/v1/template", headers=auth, files={**FORM, **changes})
    assert reply.status_code == 201, reply.text
    return reply.json()  # type: ignore[no-any-return]


async def test_save_read_list_update_delete(api: Api) -> None:
    auth = await api.user("templater")
    user_id = (await api.client.get("/v1/user", headers=auth)).json()["id"]
    saved = await save(api, auth)
    assert saved == {"id": saved["id"], "user_id": user_id, "name": "Portrait", "description": "A photo, restyled",
                     "body": GRAPH, "created_at": saved["created_at"], "updated_at": saved["created_at"]}
    url = f"/v1/template/{saved['id']}"
    assert (await api.client.get(url, headers=auth)).json() == saved
    second = await save(api, auth, name=(None, "Second"))
    listed = (await api.client.get("/v1/template", headers=auth)).json()
    assert listed["total"] == 2
    assert [t["name"] for t in listed["templates"]] == ["Second", "Portrait"]
    assert "body" not in listed["templates"][0]

    reply = await api.client.put(url, headers=auth, files={"description": (None, "Changed")})
    assert reply.status_code == 200
    updated = reply.json()
    assert {**updated, "updated_at": None} == {**saved, "description": "Changed", "updated_at": None}
    assert (updated["name"], updated["description"], updated["body"]) == ("Portrait", "Changed", GRAPH)
    reply = await api.client.put(url, headers=auth, files={"body": ("b.json", json.dumps(PLAIN).encode())})
    assert reply.json()["body"] == PLAIN

    assert (await api.client.delete(url, headers=auth)).status_code == 204
    assert (await api.client.get(url, headers=auth)).status_code == 404
    assert [t["id"] for t in (await api.client.get("/v1/template", headers=auth)).json()["templates"]] == [
        second["id"]]


@pytest.mark.parametrize(("changes", "message", "field"), [
    ({"name": None}, "missing required field 'name'", "name"),
    ({"body": None}, "missing required field 'body'", "body"),
    ({"name": (None, " ")}, "name cannot be empty", "name"),
    ({"name": (None, "n" * 101)}, "name must be at most 100 characters", "name"),
    ({"description": (None, "d" * 501)}, "description must be at most 500 characters", "description"),
    ({"body": ("b.json", b"{not json")}, "body is not valid JSON: Expecting property name enclosed in double "
     "quotes at line 1 column 2", "body"),
    ({"body": ("b.json", b'{"nodes": [], "links": []}')}, "body is a UI-format export (it has 'nodes' and "
     "'links'); export the workflow in API format ('Export (API)') and upload that", "body"),
    ({"body": ("b.json", json.dumps({"1": {"class_type": "K", "inputs": {"s": "$choice(s, only)"}}}).encode())},
     "'$choice(s, only)' in node 1 must list 2 to 4 non-empty options", "#s"),
    ({"color": (None, "red")}, "unknown field 'color': expected name, description or body", "color"),
])
async def test_save_refuses_bad_fields_and_placeholders(api: Api, changes: dict,  # type: ignore[type-arg]
                                                        message: str, field: str) -> None:
    auth = await api.user("bad-templater")
    files = {k: v for k, v in {**FORM, **changes}.items() if v is not None}
    reply = await api.client.post("/v1/template", headers=auth, files=files)
    assert reply.status_code == 400, reply.text
    body = reply.json()
    assert (body["status"], body["message"], body["details"][0]["field"]) == (400, message, field)
    assert (await api.client.get("/v1/template", headers=auth)).json()["total"] == 0


async def test_run_creates_a_workflow_from_the_body(api: Api) -> None:
    auth = await api.user("template-runner")
    saved = await save(api, auth)
    url = f"/v1/template/{saved['id']}/run"
    reply = await api.client.post(url, headers=auth, data={"#sampler": "dpm", "priority": "high"},
                                  files={"$photo": ("cat.png", PNG, "image/png")})
    assert reply.status_code == 201, reply.text
    wf = reply.json()
    assert (wf["name"], wf["status"], wf["tags"]) == ("Portrait", "accepted", [])
    record = (await api.client.get(f"/v1/workflow/{wf['id']}", headers=auth)).json()
    assert (record["workflow_json"], record["priority"]) == (GRAPH, "high")
    assert (api.objects_dir / "inputs" / wf["id"] / "photo" / "cat.png").read_bytes() == PNG

    reply = await api.client.post(url, headers=auth, data={"name": "Named run"},
                                  files={"$photo": ("cat.png", PNG, "image/png")})
    assert reply.json()["name"] == "Named run"

    reply = await api.client.post(url, headers=auth, files={"workflow_json": ("w.json", b"{}")})
    assert reply.json() == {"status": 400, "reason": "UNKNOWN_FIELD", "details": [{"field": "workflow_json"}],
                            "message": "a template run takes its graph from the template; workflow_json is not "
                                       "accepted"}
    reply = await api.client.post(url, headers=auth, files={"#sampler": (None, "dpm")})
    assert reply.status_code == 400 and reply.json()["details"][0]["field"] == "$photo"
    reply = await api.client.post(url, headers=auth, data={"#sampler": "lms"},
                                  files={"$photo": ("cat.png", PNG, "image/png")})
    assert reply.status_code == 400 and reply.json()["details"][0]["field"] == "#sampler"


async def test_templates_are_private(api: Api) -> None:
    owner, stranger = await api.user("template-owner"), await api.user("template-stranger")
    saved = await save(api, owner)
    url = f"/v1/template/{saved['id']}"
    for method, path, kwargs in [("GET", url, {}), ("PUT", url, {"files": {"name": (None, "x")}}),
                                 ("DELETE", url, {}), ("POST", f"{url}/run", {"files": {"#sampler": (None, "dpm")}})]:
        reply = await api.client.request(method, path, headers=stranger, **kwargs)
        assert reply.status_code == 404, (method, path)
        assert reply.json() == {"status": 404, "message": "template not found", "reason": "TEMPLATE_NOT_FOUND",
                                "details": [{"id": saved["id"]}]}
    assert (await api.client.get("/v1/template", headers=stranger)).json() == {"templates": [], "total": 0}
    assert (await api.client.get(url, headers=owner)).json()["name"] == "Portrait"
