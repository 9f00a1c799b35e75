"""GET/list/cancel/outputs of workflows, the user, and error bodies of the whole app."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

import pytest
from comfyfleet.scheduler.v1 import workflow_pb2
from comfyfleet.storage.v1 import object_pb2

from tests.gateway.conftest import AUTH, Stack
from tests.gateway.fakes import USER_ID, StoredObject, make_workflow, sign, ts

WF = "2b1d8f0e-5c3a-4e8b-9a61-7d2f4c9e0a11"


def completed(workflow_id: str = WF) -> workflow_pb2.Workflow:
    return make_workflow(
        workflow_id, status=workflow_pb2.WORKFLOW_STATUS_COMPLETED, prompt_id="p-9", runner_id="r-1",
        workflow_json=json.dumps({"1": {"class_type": "SaveImage", "inputs": {}}}),
        params=[workflow_pb2.WorkflowParam(placeholder="$text(prompt)", value="a cat")],
        started_at=ts(1_700_000_100), completed_at=ts(1_700_000_200),
        outputs=[workflow_pb2.Output(id="o1", node_id="9", filename="img.png", object=object_pb2.ObjectRef(
            key=f"outputs/{workflow_id}/9/img.png", size_bytes=3, content_type="image/png"))],
    )


async def test_get_returns_the_full_record(stack: Stack) -> None:
    stack.scheduler.workflows[WF] = completed()
    reply = await stack.client.get(f"/v1/workflow/{WF}", headers=AUTH)
    assert reply.status_code == 200
    record = reply.json()
    assert record["id"] == WF and record["user_id"] == USER_ID and record["status"] == "completed"
    assert record["workflow_json"] == {"1": {"class_type": "SaveImage", "inputs": {}}}
    assert record["workflow_params"] == [["$text(prompt)", "a cat"]]
    assert record["prompt_id"] == "p-9" and record["runner_id"] == "r-1" and record["queue_number"] is None
    assert record["started_at"] == "2023-11-14T22:15:00Z" and record["completed_at"] == "2023-11-14T22:16:40Z"
    assert record["attempt"] == 1 and record["priority"] == "normal"
    for key in ("error_node", "exception_type", "exception_message"):
        assert record[key] is None


async def test_get_of_an_unknown_workflow_is_404_with_the_schedulers_reason(stack: Stack) -> None:
    reply = await stack.client.get(f"/v1/workflow/{WF}", headers=AUTH)
    assert reply.status_code == 404
    assert reply.json() == {"status": 404, "message": "workflow not found", "reason": "WORKFLOW_NOT_FOUND"}


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer nope"}])
async def test_every_workflow_route_needs_a_token(stack: Stack, headers: dict[str, str]) -> None:
    stack.scheduler.workflows[WF] = completed()
    for method, path in [("GET", f"/v1/workflow/{WF}"), ("GET", "/v1/workflow"), ("GET", "/v1/user"),
                         ("POST", f"/v1/workflow/{WF}/cancel"), ("GET", f"/v1/workflow/{WF}/subscribe"),
                         ("GET", f"/v1/workflow/{WF}/outputs")]:
        reply = await stack.client.request(method, path, headers=headers)
        assert reply.status_code == 401, (method, path)
        assert reply.json()["status"] == 401


async def test_list_pages_and_filters(stack: Stack) -> None:
    for i in range(3):
        workflow_id = f"00000000-0000-4000-8000-00000000000{i}"
        stack.scheduler.workflows[workflow_id] = make_workflow(
            workflow_id, created_at=ts(1_700_000_000 + i), tags=["gpu"] if i else [])
    reply = await stack.client.get("/v1/workflow", params={"page": 1, "per_page": 2}, headers=AUTH)
    assert reply.status_code == 200
    listed = reply.json()
    assert listed["total"] == 3 and [w["id"][-1] for w in listed["workflows"]] == ["2", "1"]
    assert set(listed["workflows"][0]) == {"id", "name", "status", "tags", "created_at", "updated_at",
                                           "started_at", "completed_at"}
    reply = await stack.client.get("/v1/workflow", params={"status": "accepted", "tag": "gpu"}, headers=AUTH)
    assert reply.json()["total"] == 2
    request = stack.scheduler.list_requests[-1]
    assert (request.page, request.per_page, request.status, request.tag) == (
        1, 10, workflow_pb2.WORKFLOW_STATUS_ACCEPTED, "gpu")


@pytest.mark.parametrize(
    ("params", "field"),
    [({"per_page": "0"}, "per_page"), ({"per_page": "101"}, "per_page"), ({"per_page": "ten"}, "per_page"),
     ({"page": "0"}, "page"), ({"page": "-1"}, "page"), ({"page": "99999999999999999999"}, "page"),
     ({"status": "done"}, "status"), ({"tag": "no spaces"}, "tag")],
)
async def test_bad_list_parameters_are_400(stack: Stack, params: dict[str, str], field: str) -> None:
    reply = await stack.client.get("/v1/workflow", params=params, headers=AUTH)
    assert reply.status_code == 400
    error = reply.json()
    assert error["status"] == 400 and error["details"][0]["field"] == field and field in error["message"]
    assert stack.scheduler.list_requests == []


async def test_cancel_returns_the_record(stack: Stack) -> None:
    stack.scheduler.workflows[WF] = make_workflow(WF, status=workflow_pb2.WORKFLOW_STATUS_RUNNING)
    reply = await stack.client.post(f"/v1/workflow/{WF}/cancel", headers=AUTH)
    assert reply.status_code == 200
    assert reply.json()["status"] == "cancelled" and reply.json()["user_id"] == USER_ID


async def test_cancel_of_a_finished_workflow_is_400_keeping_the_reason(stack: Stack) -> None:
    stack.scheduler.workflows[WF] = completed()
    reply = await stack.client.post(f"/v1/workflow/{WF}/cancel", headers=AUTH)
    assert reply.status_code == 400
    assert reply.json() == {"status": 400, "message": "workflow already finished", "reason": "WORKFLOW_FINISHED",
                            "details": [{"status": "completed"}]}


async def test_outputs_are_404_until_completed(stack: Stack) -> None:
    stack.scheduler.workflows[WF] = make_workflow(WF, status=workflow_pb2.WORKFLOW_STATUS_RUNNING)
    reply = await stack.client.get(f"/v1/workflow/{WF}/outputs", headers=AUTH)
    assert reply.status_code == 404
    error = reply.json()
    assert error["reason"] == "WORKFLOW_NOT_COMPLETED" and "running" in error["message"]
    reply = await stack.client.get("/v1/workflow/00000000-0000-4000-8000-000000000000/outputs", headers=AUTH)
    assert reply.status_code == 404 and reply.json()["reason"] == "WORKFLOW_NOT_FOUND"


async def test_outputs_of_a_completed_workflow_have_signed_urls(stack: Stack) -> None:
    stack.scheduler.workflows[WF] = completed()
    key = f"outputs/{WF}/9/img.png"
    reply = await stack.client.get(f"/v1/workflow/{WF}/outputs", headers=AUTH)
    assert reply.status_code == 200
    [output] = reply.json()
    src = output.pop("src")
    assert output == {"id": "o1", "workflow_id": WF, "filename": "img.png", "content_type": "image/png",
                      "size": 3, "node_id": "9"}
    url = urlsplit(src)
    query = parse_qs(url.query)
    assert url.path == f"/v1/objects/{key}"
    assert query["signature"] == [sign(key, int(query["expires"][0]))]

    # The signed URL downloads through this gateway, without a token.
    stack.storage.objects[key] = StoredObject(b"PNG", "image/png", 1)
    download = await stack.client.get(f"{url.path}?{url.query}")
    assert download.status_code == 200 and download.content == b"PNG"


async def test_completed_without_outputs_is_an_empty_list(stack: Stack) -> None:
    stack.scheduler.workflows[WF] = make_workflow(WF, status=workflow_pb2.WORKFLOW_STATUS_COMPLETED)
    reply = await stack.client.get(f"/v1/workflow/{WF}/outputs", headers=AUTH)
    assert reply.status_code == 200 and reply.json() == []


async def test_user(stack: Stack) -> None:
    reply = await stack.client.get("/v1/user", headers=AUTH)
    assert reply.status_code == 200
    assert reply.json() == {"id": USER_ID, "name": "Ada", "email": "ada@example.com", "tier": "pro",
                            "created_at": "2020-09-13T12:26:40Z", "updated_at": "2020-09-13T12:26:40Z"}


async def test_unknown_routes_and_methods_have_the_error_body(stack: Stack) -> None:
    reply = await stack.client.get("/v1/nothing-here")
    assert reply.status_code == 404 and reply.json() == {"status": 404, "message": "not found", "reason": "NOT_FOUND"}
    reply = await stack.client.delete("/v1/user", headers=AUTH)
    assert reply.status_code == 405 and reply.json()["reason"] == "METHOD_NOT_ALLOWED"


async def test_an_upstream_bug_is_a_500_with_the_error_body(stack: Stack) -> None:
    def explode() -> None:
        raise RuntimeError("bug in the scheduler")

    stack.scheduler.on_get = explode
    reply = await stack.client.get(f"/v1/workflow/{WF}", headers=AUTH)
    assert reply.status_code == 500
    error = reply.json()
    assert error["status"] == 500 and error["message"] == "internal error" and "bug" not in json.dumps(error)
