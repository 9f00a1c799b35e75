"""POST /v1/workflow through the real app, with files streamed to the storage fake."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
from comfyfleet.scheduler.v1 import workflow_pb2

from services.common.errors import InvalidArgument, PermissionDenied
from tests.gateway.conftest import AUTH, Stack
from tests.gateway.fakes import GOOD_TOKEN
from tests.gateway.forms import BOUNDARY, CONTENT_TYPE, File, body, chunked

GRAPH = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "$file(photo)"}},
    "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "$text(prompt)"}},
    "3": {"class_type": "KSampler", "inputs": {"sampler_name": "$choice(sampler, euler, dpmpp_2m)"}},
}
PHOTO = bytes(range(256)) * 1200  # 300 KiB: several body chunks


def good_fields(**changes: str | File | None) -> list[tuple[str, str | File]]:
    fields: dict[str, str | File | None] = {
        "name": "cats",
        "workflow_json": File("workflow.json", json.dumps(GRAPH).encode(), "application/json"),
        "tags": " gpu, fast ,gpu",
        "$prompt": "a cat in a hat",
        "$photo": File("my cat.png", PHOTO, "image/png"),
        "#sampler": "euler",
        "priority": "high",
    }
    fields.update(changes)
    return [(name, value) for name, value in fields.items() if value is not None]


async def post(stack: Stack, fields: list[tuple[str, str | File]], *, headers: dict[str, str] | None = None,
               chunk: int = 16 * 1024) -> Any:
    return await stack.client.post(
        "/v1/workflow",
        content=chunked(body(fields), chunk),
        headers={"Content-Type": CONTENT_TYPE, **AUTH, **(headers or {})},
    )


async def test_create_streams_files_to_storage_and_creates_the_workflow(stack: Stack) -> None:
    reply = await post(stack, good_fields())
    assert reply.status_code == 201, reply.text
    created = reply.json()
    workflow_id = created["id"]
    assert created == {
        "id": workflow_id, "name": "cats", "status": "accepted", "tags": ["gpu", "fast"],
        "created_at": "2023-11-14T22:13:20Z", "updated_at": "2023-11-14T22:13:21Z",
        "started_at": None, "completed_at": None,
    }
    assert reply.headers["location"] == f"/v1/workflow/{workflow_id}"

    [request] = stack.scheduler.created
    assert request.id == workflow_id and request.name == "cats" and list(request.tags) == ["gpu", "fast"]
    assert json.loads(request.workflow_json) == GRAPH
    assert request.priority == workflow_pb2.PRIORITY_HIGH
    inputs = {i.field: i for i in request.inputs}
    assert set(inputs) == {"$prompt", "$photo", "#sampler"}
    assert inputs["$prompt"].value == "a cat in a hat" and not inputs["$prompt"].HasField("object")
    assert inputs["#sampler"].value == "euler"
    photo = inputs["$photo"]
    key = f"inputs/{workflow_id}/photo/my_cat.png"
    assert photo.filename == "my cat.png"
    assert (photo.object.key, photo.object.size_bytes, photo.object.content_type) == (key, len(PHOTO), "image/png")

    stored = stack.storage.objects[key]
    assert stored.data == PHOTO and stored.content_type == "image/png"
    assert stored.chunks > 1, "the file was forwarded as it arrived, not in one piece"
    assert stack.storage.headers[0].max_size_bytes == stack.settings.max_request_bytes
    assert stack.storage.deleted_prefixes == []


async def test_a_form_built_by_httpx_works_too(stack: Stack) -> None:
    reply = await stack.client.post(
        "/v1/workflow", headers=AUTH,
        data={"name": "plain", "$prompt": "x", "#sampler": "euler"},
        files={"workflow_json": ("w.json", json.dumps(GRAPH), "application/json"),
               "$photo": ("a.png", PHOTO, "image/png")},
    )
    assert reply.status_code == 201, reply.text
    [request] = stack.scheduler.created
    assert request.priority == workflow_pb2.PRIORITY_NORMAL and list(request.tags) == []


async def test_an_empty_file_input_counts_as_not_sent(stack: Stack) -> None:
    reply = await post(stack, good_fields(**{"$photo": File("", b"")}))
    assert reply.status_code == 201, reply.text
    assert {i.field for i in stack.scheduler.created[0].inputs} == {"$prompt", "#sampler"}
    assert stack.storage.objects == {}


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic abc"},
                                     {"Authorization": "Bearer"}])
async def test_create_without_a_valid_token_is_401_before_the_body_is_read(
    stack: Stack, headers: dict[str, str]
) -> None:
    reply = await stack.client.post(
        "/v1/workflow", content=body(good_fields()), headers={"Content-Type": CONTENT_TYPE, **headers}
    )
    assert reply.status_code == 401
    error = reply.json()
    assert set(error) == {"status", "message", "reason"} and error["status"] == 401
    assert reply.headers["www-authenticate"] == "Bearer"
    assert stack.storage.objects == {} and stack.storage.headers == []
    assert stack.scheduler.created == []


async def test_the_scheduler_decides_the_token(stack: Stack) -> None:
    reply = await stack.client.post("/v1/workflow", content=b"", headers={"Authorization": "Bearer wrong"})
    assert reply.json() == {"status": 401, "message": "invalid or expired token", "reason": "INVALID_TOKEN"}
    assert stack.scheduler.get_user_calls == 1


CASES: list[tuple[str, bytes, str, dict[str, Any]]] = [
    ("missing-name", body(good_fields(name=None)), "MISSING_FIELD", {"field": "name"}),
    ("missing-workflow-json", body(good_fields(workflow_json=None)), "MISSING_FIELD", {"field": "workflow_json"}),
    ("empty-name", body(good_fields(name="")), "INVALID_FIELD", {"field": "name"}),
    ("long-name", body(good_fields(name="x" * 201)), "INVALID_FIELD", {"field": "name"}),
    ("bad-tag", body(good_fields(tags="gpu,no spaces")), "INVALID_TAG", {"field": "tags", "value": "no spaces"}),
    ("too-many-tags", body(good_fields(tags=",".join(f"t{i}" for i in range(11)))), "TOO_MANY_TAGS",
     {"field": "tags"}),
    ("bad-priority", body(good_fields(priority="urgent")), "INVALID_FIELD", {"field": "priority", "value": "urgent"}),
    ("unknown-field", body([*good_fields(), ("colour", "red")]), "UNKNOWN_FIELD", {"field": "colour"}),
    ("bare-sigil", body([*good_fields(), ("$", "x")]), "UNKNOWN_FIELD", {"field": "$"}),
    ("bad-file-name", body([*good_fields(**{"$photo": None}), ("$bad name!", File("a.png", b"x"))]),
     "INVALID_FIELD", {"field": "$bad name!"}),
    ("duplicate-field", body([*good_fields(), ("name", "again")]), "DUPLICATE_FIELD", {"field": "name"}),
]


@pytest.mark.parametrize(("data", "reason", "detail"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_bad_forms_get_400_naming_the_field(
    stack: Stack, data: bytes, reason: str, detail: dict[str, Any]
) -> None:
    reply = await stack.client.post(
        "/v1/workflow", content=chunked(data, 8192), headers={"Content-Type": CONTENT_TYPE, **AUTH}
    )
    assert reply.status_code == 400, reply.text
    error = reply.json()
    assert set(error) == {"status", "message", "reason", "details"}
    assert error["status"] == 400 and error["reason"] == reason and error["details"] == [detail]
    assert detail["field"] in error["message"]
    assert stack.scheduler.created == []
    assert stack.storage.objects == {}, "anything stored before the error is deleted"


async def test_invalid_utf8_text_is_400(stack: Stack) -> None:
    data = body(good_fields(name="PLACEHOLDER")).replace(b"PLACEHOLDER", b"\xff\xfe")
    reply = await stack.client.post("/v1/workflow", content=data, headers={"Content-Type": CONTENT_TYPE, **AUTH})
    assert reply.status_code == 400
    assert reply.json()["details"] == [{"field": "name"}]


@pytest.mark.parametrize(
    ("content_type", "data", "reason"),
    [
        ("application/json", b'{"name": "x"}', "UNSUPPORTED_CONTENT_TYPE"),
        ("multipart/form-data", b"", "MALFORMED_MULTIPART"),
        (CONTENT_TYPE, b"definitely not multipart", "MALFORMED_MULTIPART"),
        (CONTENT_TYPE, body(good_fields())[:-200], "MALFORMED_MULTIPART"),
        (CONTENT_TYPE, f"--{BOUNDARY}\r\nX-Nothing: 1\r\n\r\nx\r\n--{BOUNDARY}--\r\n".encode(), "MALFORMED_MULTIPART"),
    ],
    ids=["json", "no-boundary", "garbage", "truncated", "no-disposition"],
)
async def test_malformed_requests_are_400(stack: Stack, content_type: str, data: bytes, reason: str) -> None:
    reply = await stack.client.post("/v1/workflow", content=data, headers={"Content-Type": content_type, **AUTH})
    assert reply.status_code == 400, reply.text
    error = reply.json()
    assert error["status"] == 400 and error["reason"] == reason and error["message"]
    assert stack.storage.objects == {}


async def test_a_truncated_upload_deletes_the_stored_file(stack: Stack) -> None:
    data = body(good_fields())
    cut = data.index(b"#sampler")  # after the photo
    reply = await stack.client.post(
        "/v1/workflow", content=chunked(data[:cut], 8192), headers={"Content-Type": CONTENT_TYPE, **AUTH}
    )
    assert reply.status_code == 400 and reply.json()["reason"] == "MALFORMED_MULTIPART"
    assert stack.storage.objects == {}
    assert len(stack.storage.deleted_prefixes) == 1 and stack.storage.deleted_prefixes[0].startswith("inputs/")


async def test_over_the_limit_while_streaming_is_413_and_nothing_is_kept(
    make_stack: Callable[..., AbstractAsyncContextManager[Stack]],
) -> None:
    async with make_stack(max_request_bytes=200 * 1024) as stack:
        fields = good_fields(**{"$photo": File("small.png", b"s" * 20_000, "image/png")})
        fields.append(("$other", File("big.bin", b"b" * 400_000)))
        reply = await post(stack, fields)  # chunked: no Content-Length to reject early
        assert reply.status_code == 413, reply.text
        error = reply.json()
        assert error == {"status": 413, "message": "the request is over the limit of 200 KB",
                         "reason": "REQUEST_TOO_LARGE", "details": [{"limit_bytes": 200 * 1024}]}
        assert stack.scheduler.created == []
        prefix = stack.storage.deleted_prefixes[0]
        assert prefix.startswith("inputs/") and prefix.endswith("/")
        assert stack.storage.objects == {}, "the finished file was deleted and the partial one never committed"
        for _ in range(300):  # the cancellation of the partial upload reaches storage asynchronously
            if stack.storage.aborted_uploads:
                break
            await asyncio.sleep(0.01)
        # The partial upload was cancelled (storage may not have read its header yet).
        assert stack.storage.aborted_uploads in ([f"{prefix}other/big.bin"], [""])


async def test_a_declared_length_over_the_limit_is_413_before_reading(
    make_stack: Callable[..., AbstractAsyncContextManager[Stack]],
) -> None:
    async with make_stack(max_request_bytes=1000) as stack:
        data = body(good_fields())
        reply = await stack.client.post("/v1/workflow", content=data, headers={"Content-Type": CONTENT_TYPE, **AUTH})
        assert reply.status_code == 413 and reply.json()["reason"] == "REQUEST_TOO_LARGE"
        assert stack.storage.headers == [] and stack.storage.deleted_prefixes == []


async def test_a_scheduler_rejection_after_upload_deletes_the_inputs(stack: Stack) -> None:
    stack.scheduler.create_error = InvalidArgument(
        "unknown field $nope", reason="UNKNOWN_PARAMETER", details=[{"field": "$nope"}]
    )
    reply = await post(stack, good_fields())
    assert reply.status_code == 400
    assert reply.json() == {"status": 400, "message": "unknown field $nope", "reason": "UNKNOWN_PARAMETER",
                            "details": [{"field": "$nope"}]}
    [request] = stack.scheduler.created
    assert stack.storage.deleted_prefixes == [f"inputs/{request.id}/"]
    assert stack.storage.objects == {}


async def test_a_tier_limit_is_403_and_deletes_the_inputs(stack: Stack) -> None:
    stack.scheduler.create_error = PermissionDenied(
        "workflow parameter limit exceeded for your tier", reason="TIER_LIMIT"
    )
    reply = await post(stack, good_fields())
    assert reply.status_code == 403 and reply.json()["reason"] == "TIER_LIMIT"
    assert stack.storage.objects == {}


async def test_storage_down_is_503_with_retry_after(
    make_stack: Callable[..., AbstractAsyncContextManager[Stack]],
) -> None:
    async with make_stack() as stack:
        await stack.storage_server.stop(None)
        reply = await post(stack, good_fields())
        assert reply.status_code == 503
        assert reply.headers["retry-after"] == "5"
        error = reply.json()
        assert error == {"status": 503, "message": "storage is unavailable", "reason": "UNAVAILABLE"}
        assert stack.scheduler.created == []


async def test_the_scheme_is_case_insensitive_and_spaces_are_tolerated(stack: Stack) -> None:
    reply = await post(stack, good_fields(), headers={"Authorization": f"bearer   {GOOD_TOKEN}"})
    assert reply.status_code == 201
