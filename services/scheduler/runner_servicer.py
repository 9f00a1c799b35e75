"""RunnerService: proto in, domain calls (services.scheduler.runners), proto out."""

from __future__ import annotations

from comfyfleet.scheduler.v1 import runner_service_pb2 as pb
from comfyfleet.scheduler.v1 import runner_service_pb2_grpc

from services.common.grpc_server import maps_domain_errors
from services.scheduler.db.identity_store import IdentityStore
from services.scheduler.records import ts
from services.scheduler.runners import Runners
from services.scheduler.workflow_servicer import Context, caller


class RunnerServicer(runner_service_pb2_grpc.RunnerServiceServicer):
    def __init__(self, identity: IdentityStore, runners: Runners) -> None:
        self.identity = identity
        self.runners = runners

    @maps_domain_errors
    async def CreateRunner(self, request: pb.CreateRunnerRequest, context: Context) -> pb.CreateRunnerResponse:
        user = await caller(self.identity, context)
        return pb.CreateRunnerResponse(runner=await self.runners.create(user, request))

    @maps_domain_errors
    async def ListRunners(self, request: pb.ListRunnersRequest, context: Context) -> pb.ListRunnersResponse:
        user = await caller(self.identity, context)
        runners, total = await self.runners.list_page(user, request)
        return pb.ListRunnersResponse(runners=runners, total=total)

    @maps_domain_errors
    async def GetRunner(self, request: pb.GetRunnerRequest, context: Context) -> pb.GetRunnerResponse:
        user = await caller(self.identity, context)
        return pb.GetRunnerResponse(runner=await self.runners.get(user, request.id))

    @maps_domain_errors
    async def UpdateRunner(self, request: pb.UpdateRunnerRequest, context: Context) -> pb.UpdateRunnerResponse:
        user = await caller(self.identity, context)
        return pb.UpdateRunnerResponse(runner=await self.runners.update(user, request))

    @maps_domain_errors
    async def DeleteRunner(self, request: pb.DeleteRunnerRequest, context: Context) -> pb.DeleteRunnerResponse:
        user = await caller(self.identity, context)
        await self.runners.delete(user, request.id)
        return pb.DeleteRunnerResponse()

    @maps_domain_errors
    async def InterruptRunner(
        self, request: pb.InterruptRunnerRequest, context: Context
    ) -> pb.InterruptRunnerResponse:
        user = await caller(self.identity, context)
        return pb.InterruptRunnerResponse(workflow_ids=await self.runners.interrupt(user, request.id))

    @maps_domain_errors
    async def CreateRunnerToken(
        self, request: pb.CreateRunnerTokenRequest, context: Context
    ) -> pb.CreateRunnerTokenResponse:
        user = await caller(self.identity, context)
        token, expires_at = await self.runners.create_token(user, request)
        response = pb.CreateRunnerTokenResponse(token=token)
        if (value := ts(expires_at)) is not None:
            response.expires_at.CopyFrom(value)
        return response
