"""Internal callers: the whole life of a workflow over gRPC alone, no HTTP.

Files go in through StorageService.PutObject, the workflow is created, watched and its
output read back through StorageService.GetObject. The scheduler takes the same bearer token
in the `authorization` metadata that HTTP clients send; storage, an internal service, takes
only the suite's service token (services/common/service_auth.py). Every server also answers
the standard health and reflection services.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import AsyncIterator

import grpc
from comfyfleet.scheduler.v1 import workflow_pb2, workflow_service_pb2, workflow_service_pb2_grpc
from comfyfleet.storage.v1 import storage_service_pb2, storage_service_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.common.service_auth import ServiceSecurity
from services.devrun import Suite
from tests.integration.test_end_to_end import WORKFLOW, png


async def _put(chunks: list[bytes], key: str) -> AsyncIterator[storage_service_pb2.PutObjectRequest]:
    yield storage_service_pb2.PutObjectRequest(
        header=storage_service_pb2.PutObjectHeader(key=key, content_type="image/png"))
    for chunk in chunks:
        yield storage_service_pb2.PutObjectRequest(chunk=chunk)
    data = b"".join(chunks)
    yield storage_service_pb2.PutObjectRequest(finish=storage_service_pb2.PutObjectFinish(
        size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest()))


async def test_create_watch_and_read_outputs_over_grpc_alone(suite: Suite) -> None:
    auth = (("authorization", f"Bearer {suite.token}"),)
    photo = png(24, 16)
    workflow_id = str(uuid.uuid4())
    as_service = ServiceSecurity(service_token=suite.service_token)
    async with as_service.channel(f"127.0.0.1:{suite.storage_port}", ()) as storage_channel, \
            grpc.aio.insecure_channel(f"127.0.0.1:{suite.scheduler_port}") as scheduler_channel:
        storage = storage_service_pb2_grpc.StorageServiceStub(storage_channel)
        workflows = workflow_service_pb2_grpc.WorkflowServiceStub(scheduler_channel)

        stored = await storage.PutObject(_put([photo[:100], photo[100:]], f"inputs/{workflow_id}/photo/cat.png"))
        created = await workflows.CreateWorkflow(workflow_service_pb2.CreateWorkflowRequest(
            id=workflow_id, name="grpc only", workflow_json=json.dumps(WORKFLOW), tags=["gpu"],
            inputs=[
                workflow_service_pb2.WorkflowInput(field="$photo", object=stored.object, filename="cat.png"),
                workflow_service_pb2.WorkflowInput(field="#method", value="area"),
            ],
        ), metadata=auth)
        assert created.workflow.status == workflow_pb2.WORKFLOW_STATUS_ACCEPTED

        statuses = []
        async for item in workflows.WatchWorkflow(
                workflow_service_pb2.WatchWorkflowRequest(id=workflow_id, from_start=True), metadata=auth):
            if item.event.WhichOneof("kind") == "status":
                statuses.append(workflow_pb2.WorkflowStatus.Name(item.event.status.workflow.status))
        assert statuses[0] == "WORKFLOW_STATUS_ACCEPTED" and statuses[-1] == "WORKFLOW_STATUS_COMPLETED"

        record = (await workflows.GetWorkflow(workflow_service_pb2.GetWorkflowRequest(id=workflow_id),
                                              metadata=auth)).workflow
        [output] = record.outputs
        data = b""
        async for part in storage.GetObject(storage_service_pb2.GetObjectRequest(key=output.object.key)):
            if part.WhichOneof("part") == "chunk":
                data += part.chunk
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) == output.object.size_bytes
        assert hashlib.sha256(data).hexdigest() == output.object.sha256

        # Without a token, the same call is refused.
        try:
            await workflows.GetWorkflow(workflow_service_pb2.GetWorkflowRequest(id=workflow_id))
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        else:
            raise AssertionError("a call without a token was answered")

        # Reflection lists the services of each server.
        for channel, expected in ((scheduler_channel, "comfyfleet.scheduler.v1.WorkflowService"),
                                  (storage_channel, "comfyfleet.storage.v1.StorageService")):
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
            names = [s.name async for reply in replies for s in reply.list_services_response.service]
            assert expected in names and "grpc.health.v1.Health" in names
