"""Two users over every endpoint: another user's workflow, runner, template or output is a 404
everywhere (never a 403 that confirms it exists), lists show none of it, and nothing of it
changes."""

from __future__ import annotations

import json

from comfyfleet.runner.v1 import runner_event_pb2 as ev

from tests.api.conftest import Api
from tests.api.forms import GRAPH, PLAIN, PNG, workflow_files


async def test_another_users_resources_are_404_on_every_endpoint(api: Api) -> None:
    owner, other = await api.user("tenant-owner"), await api.user("tenant-other")
    agent = await api.runner_for(owner, "owners-box", "gpu")
    runner_id = (await api.client.get("/v1/runner", headers=owner)).json()["runners"][0]["id"]
    done = (await api.client.post("/v1/workflow", headers=owner, data={"name": "mine"},
                                  files=workflow_files(PLAIN))).json()
    assignment = await agent.assignment()
    stored = await api.put_object(f"outputs/{done['id']}/1/o.png", PNG)
    for event in ({"uploaded": ev.Uploaded()}, {"running": ev.Running(prompt_id="p")},
                  {"output_stored": ev.OutputStored(node_id="1", filename="o.png", object=stored)},
                  {"completed": ev.Completed()}):
        agent.send(done["id"], assignment.attempt, **event)
    await agent.close()
    reply = await api.client.get(f"/v1/workflow/{done['id']}/outputs", headers=owner)
    assert reply.status_code == 200 and [o["filename"] for o in reply.json()] == ["o.png"]
    template = (await api.client.post("/v1/template", headers=owner, files={
        "name": (None, "t"), "description": (None, "d"), "body": ("b.json", json.dumps(GRAPH).encode())})).json()
    before = {path: (await api.client.get(path, headers=owner)).json() for path in (
        f"/v1/workflow/{done['id']}", f"/v1/runner/{runner_id}", f"/v1/template/{template['id']}")}

    w, r, t = f"/v1/workflow/{done['id']}", f"/v1/runner/{runner_id}", f"/v1/template/{template['id']}"
    photo = {"$photo": ("cat.png", PNG, "image/png")}
    attempts = [
        ("GET", w, {}, "workflow"), ("DELETE", w, {}, "workflow"), ("POST", f"{w}/cancel", {}, "workflow"),
        ("POST", f"{w}/rerun", {"files": {"$prefix": (None, "x")}}, "workflow"),
        ("GET", f"{w}/subscribe", {}, "workflow"), ("GET", f"{w}/outputs", {}, "workflow"),
        ("GET", r, {}, "runner"), ("PUT", r, {"json": {"status": "disabled"}}, "runner"),
        ("DELETE", r, {}, "runner"), ("POST", f"{r}/interrupt", {}, "runner"),
        ("GET", t, {}, "template"), ("PUT", t, {"files": {"name": (None, "stolen")}}, "template"),
        ("DELETE", t, {}, "template"), ("POST", f"{t}/run", {"files": photo}, "template"),
    ]
    for method, path, kwargs, kind in attempts:
        reply = await api.client.request(method, path, headers=other, **kwargs)
        assert reply.status_code == 404, (method, path, reply.text)
        assert reply.json()["message"] == f"{kind} not found", (method, path)
    reply = await api.client.get(f"{w}/subscribe", headers={**other, "Last-Event-ID": "0"})
    assert reply.status_code == 404

    for path, key in (("/v1/workflow", "workflows"), ("/v1/runner", "runners"), ("/v1/template", "templates")):
        assert (await api.client.get(path, headers=other)).json() == {key: [], "total": 0}
    usage = (await api.client.get("/v1/user", headers=other)).json()["limits"]
    assert [usage[k]["used"] for k in ("runners", "templates", "concurrent_workflows")] == [0, 0, 0]
    # the other user's tags cannot reach the owner's runner either
    reply = await api.client.post("/v1/workflow", headers=other, data={"name": "x", "tags": "gpu"},
                                  files=workflow_files(PLAIN))
    assert reply.status_code == 400 and reply.json()["reason"] == "NO_MATCHING_RUNNER"
    # nothing of the owner's changed
    for path, was in before.items():
        now = (await api.client.get(path, headers=owner)).json()
        if "connection" in was:
            was, now = {**was, "connection": None, "in_flight": None}, {**now, "connection": None, "in_flight": None}
        assert now == was, path
    assert (await api.client.get("/v1/workflow", headers=owner)).json()["total"] == 1
