"""Workflows through the public API: rerun, delete, list filters, priority (API.md "The rest")."""

from __future__ import annotations

import asyncio
import hashlib

from comfyfleet.runner.v1 import runner_event_pb2 as ev

from tests.api.conftest import Api
from tests.api.forms import GRAPH, PLAIN, PNG, workflow_files


async def create(api: Api, auth: dict[str, str], graph: dict = PLAIN, **data: str) -> dict:  # type: ignore[type-arg]
    files = workflow_files(graph, **({"$photo": ("cat.png", PNG, "image/png")} if graph is GRAPH else {}))
    reply = await api.client.post("/v1/workflow", headers=auth, data={"name": "wf", **data}, files=files)
    assert reply.status_code == 201, reply.text
    return reply.json()  # type: ignore[no-any-return]


async def test_rerun_changes_only_the_fields_sent_and_copies_reused_files(api: Api) -> None:
    auth = await api.user("rerun-owner")
    runner = await api.runner_for(auth, "gpu-box", "gpu")
    first = await create(api, auth, GRAPH, tags="gpu", **{"$prefix": "before", "#sampler": "dpm"})
    original = await runner.assignment()
    runner.send(first["id"], 1, uploaded=ev.Uploaded())
    runner.send(first["id"], 1, running=ev.Running(prompt_id="p1"))

    # While the source still holds its inputs, a rerun copies the file it does not resend.
    reply = await api.client.post(f"/v1/workflow/{first['id']}/rerun", headers=auth,
                                  files={"$prefix": (None, "after")})
    assert reply.status_code == 201, reply.text
    again = reply.json()
    assert again["id"] != first["id"]
    assert (again["name"], again["tags"], again["status"]) == ("wf", ["gpu"], "accepted")
    assert (again["started_at"], again["completed_at"]) == (None, None)
    assert reply.headers["location"] == f"/v1/workflow/{again['id']}"

    record = (await api.client.get(f"/v1/workflow/{again['id']}", headers=auth)).json()
    assert record["workflow_json"] == GRAPH
    params = dict(map(tuple, record["workflow_params"]))  # type: ignore[arg-type]
    assert (params["$choice(sampler, euler, dpm)"], params["$text(prefix, out)"]) == ("dpm", "after")
    # the file was not sent again: the new workflow has its own copy of the same bytes, which
    # outlives the source's inputs (deleted when the source finishes)
    runner.send(first["id"], 1, completed=ev.Completed())
    assignment = await runner.assignment()
    assert assignment.workflow_id == again["id"]
    [copied], [source] = assignment.inputs, original.inputs
    assert copied.object.key == f"inputs/{again['id']}/photo/cat.png" != source.object.key
    assert copied.object.sha256 == source.object.sha256 == hashlib.sha256(PNG).hexdigest()
    assert copied.filename == "cat.png"
    # the source is unchanged
    assert (await api.client.get(f"/v1/workflow/{first['id']}", headers=auth)).json()["status"] == "completed"

    # Once the source finished, its inputs are deleted: the file must be sent again.
    for _ in range(100):
        if not (api.objects_dir / "inputs" / first["id"]).exists():
            break
        await asyncio.sleep(0.05)
    assert not (api.objects_dir / "inputs" / first["id"]).exists()
    gone = await api.client.post(f"/v1/workflow/{first['id']}/rerun", headers=auth)
    assert gone.status_code == 409, gone.text
    assert gone.json()["reason"] == "INPUT_GONE" and "$photo" in gone.json()["message"]
    resent = await api.client.post(f"/v1/workflow/{first['id']}/rerun", headers=auth,
                                   files={"$photo": ("cat.png", PNG, "image/png")})
    assert resent.status_code == 201, resent.text
    await runner.drop()


async def test_rerun_with_no_body_and_with_a_new_file_and_priority(api: Api) -> None:
    auth = await api.user("rerun-bare")
    first = await create(api, auth, GRAPH, **{"$prefix": "x"})
    reply = await api.client.post(f"/v1/workflow/{first['id']}/rerun", headers=auth)
    assert reply.status_code == 201, reply.text
    reply = await api.client.post(f"/v1/workflow/{first['id']}/rerun", headers=auth,
                                  data={"priority": "high"}, files={"$photo": ("dog.png", b"dog", "image/png")})
    assert reply.status_code == 201, reply.text
    record = (await api.client.get(f"/v1/workflow/{reply.json()['id']}", headers=auth)).json()
    assert record["priority"] == "high"
    assert (api.objects_dir / "inputs" / reply.json()["id"] / "photo" / "dog.png").read_bytes() == b"dog"


async def test_rerun_errors(api: Api) -> None:
    auth = await api.user("rerun-errors")
    first = await create(api, auth)
    url = f"/v1/workflow/{first['id']}/rerun"

    reply = await api.client.post(url, headers=auth, files={"$nope": (None, "x")})
    assert reply.status_code == 400
    body = reply.json()
    assert (body["status"], body["details"][0]["field"]) == (400, "$nope")

    reply = await api.client.post(url, headers=auth, files={"name": (None, "renamed")})
    assert reply.json() == {
        "status": 400, "reason": "UNKNOWN_FIELD", "details": [{"field": "name"}],
        "message": "a rerun keeps the workflow's name; send only $<name>, #<name> or priority"}

    reply = await api.client.post(url, headers={"Authorization": "Bearer cf_nope"}, files={"$prefix": (None, "y")})
    assert reply.status_code == 401 and reply.json()["status"] == 401

    other = await api.user("rerun-stranger")
    reply = await api.client.post(url, headers=other, files={"$prefix": (None, "y")})
    assert reply.status_code == 404
    assert reply.json()["message"] == "workflow not found"
    # nothing was created for either
    assert (await api.client.get("/v1/workflow", headers=auth)).json()["total"] == 1
    assert (await api.client.get("/v1/workflow", headers=other)).json()["total"] == 0


async def test_delete_removes_a_finished_workflow_and_its_objects(api: Api) -> None:
    auth = await api.user("deleter")
    wf = await create(api, auth, GRAPH)
    inputs = api.objects_dir / "inputs" / wf["id"]
    assert (inputs / "photo" / "cat.png").read_bytes() == PNG

    reply = await api.client.delete(f"/v1/workflow/{wf['id']}", headers=auth)
    assert reply.status_code == 409
    assert reply.json() == {
        "status": 409, "reason": "WORKFLOW_NOT_FINISHED",
        "message": "workflow is accepted; only a finished workflow can be deleted",
        "details": [{"id": wf["id"], "status": "accepted"}]}

    other = await api.user("not-the-deleter")
    assert (await api.client.post(f"/v1/workflow/{wf['id']}/cancel", headers=other)).status_code == 404
    assert (await api.client.post(f"/v1/workflow/{wf['id']}/cancel", headers=auth)).status_code == 200
    reply = await api.client.delete(f"/v1/workflow/{wf['id']}", headers=other)
    assert reply.status_code == 404 and reply.json()["message"] == "workflow not found"
    assert (await api.client.get(f"/v1/workflow/{wf['id']}", headers=auth)).json()["status"] == "cancelled"

    reply = await api.client.delete(f"/v1/workflow/{wf['id']}", headers=auth)
    assert reply.status_code == 204 and reply.content == b""
    assert not (inputs / "photo" / "cat.png").exists()
    assert (await api.client.get(f"/v1/workflow/{wf['id']}", headers=auth)).status_code == 404
    assert (await api.client.get("/v1/workflow", headers=auth)).json() == {"workflows": [], "total": 0}
    assert (await api.client.delete(f"/v1/workflow/{wf['id']}", headers=auth)).status_code == 404


async def test_list_filters_by_status_and_tag_and_create_takes_a_priority(api: Api) -> None:
    auth = await api.user("lister")
    runner = await api.runner_for(auth, "tagged", "gpu", "big")
    await runner.drop()  # registered, but nothing runs: everything stays accepted
    gpu = await create(api, auth, tags="gpu", priority="high")
    big = await create(api, auth, tags="big,gpu")
    plain = await create(api, auth, priority="low")
    assert (await api.client.post(f"/v1/workflow/{plain['id']}/cancel", headers=auth)).status_code == 200

    async def ids(**params: str) -> list[str]:
        reply = await api.client.get("/v1/workflow", headers=auth, params=params)
        assert reply.status_code == 200, reply.text
        listed = reply.json()
        assert listed["total"] == len(listed["workflows"]) or "page" in params
        return [w["id"] for w in listed["workflows"]]

    assert await ids() == [plain["id"], big["id"], gpu["id"]]
    assert await ids(tag="gpu") == [big["id"], gpu["id"]]
    assert await ids(tag="big") == [big["id"]]
    assert await ids(status="cancelled") == [plain["id"]]
    assert await ids(status="accepted", tag="big") == [big["id"]]
    assert await ids(status="completed") == []
    assert await ids(per_page="1", page="2") == [big["id"]]
    assert (await api.client.get("/v1/workflow", headers=auth, params={"per_page": 1})).json()["total"] == 3
    record = (await api.client.get(f"/v1/workflow/{gpu['id']}", headers=auth)).json()
    assert record["priority"] == "high"

    reply = await api.client.get("/v1/workflow", headers=auth, params={"status": "done"})
    assert reply.status_code == 400 and reply.json()["details"][0]["field"] == "status"
    reply = await api.client.post("/v1/workflow", headers=auth, data={"name": "x", "priority": "urgent"},
                                  files=workflow_files())
    assert reply.status_code == 400
    assert reply.json()["message"] == "priority must be low, normal or high"


async def test_a_body_over_the_limit_is_413_and_nothing_is_kept(api: Api) -> None:
    auth = await api.user("too-big")
    source = await create(api, auth, GRAPH)
    before = {p.name for p in (api.objects_dir / "inputs").iterdir() if any(p.rglob("*.png"))}
    big = {"$photo": ("big.png", PNG * 400, "image/png")}
    async with api.gateway(max_request_bytes=4096) as client:
        reply = await client.post("/v1/workflow", headers=auth, data={"name": "big"},
                                  files=workflow_files(GRAPH, **big))
        assert reply.status_code == 413
        assert reply.json() == {"status": 413, "message": "the request is over the limit of 4 KB",
                                "reason": "REQUEST_TOO_LARGE", "details": [{"limit_bytes": 4096}]}
        reply = await client.post(f"/v1/workflow/{source['id']}/rerun", headers=auth, files=big)
        assert reply.status_code == 413 and reply.json()["reason"] == "REQUEST_TOO_LARGE"
    after = {p.name for p in (api.objects_dir / "inputs").iterdir() if any(p.rglob("*.png"))}
    assert after == before
    assert (await api.client.get("/v1/workflow", headers=auth)).json()["total"] == 1
