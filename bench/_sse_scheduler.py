"""A scheduler double for bench/sse_fanout.py: `python -m bench._sse_scheduler --port P
--workflows W --rate R`. Serves WorkflowService.GetWorkflow and WatchWorkflow (snapshot, the
log after a cursor, then live events) for W running workflows and appends R events a second
to each (the workflows take turns within each period); every event is a log event whose
message is its publish time (time.time()), so a subscriber can compute delivery latency.
Nothing else: no database, no auth.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from comfyfleet.scheduler.v1 import workflow_pb2, workflow_service_pb2, workflow_service_pb2_grpc

Watch = workflow_service_pb2.WatchWorkflowResponse


def workflow_ids(count: int) -> list[str]:
    return [f"00000000-0000-4000-8000-{n:012d}" for n in range(count)]


class Double(workflow_service_pb2_grpc.WorkflowServiceServicer):
    def __init__(self, count: int) -> None:
        self.logs: dict[str, list[workflow_pb2.WorkflowEvent]] = {wf: [] for wf in workflow_ids(count)}
        self.grew: dict[str, asyncio.Event] = {wf: asyncio.Event() for wf in self.logs}
        self.watches = 0

    def workflow(self, wf: str) -> workflow_pb2.Workflow:
        return workflow_pb2.Workflow(id=wf, name="bench", status=workflow_pb2.WORKFLOW_STATUS_RUNNING,
                                     last_seq=len(self.logs[wf]))

    async def GetWorkflow(
        self, request: workflow_service_pb2.GetWorkflowRequest, context: Any
    ) -> workflow_service_pb2.GetWorkflowResponse:
        return workflow_service_pb2.GetWorkflowResponse(workflow=self.workflow(request.id))

    async def WatchWorkflow(
        self, request: workflow_service_pb2.WatchWorkflowRequest, context: Any
    ) -> AsyncIterator[Watch]:
        self.watches += 1
        log = self.logs[request.id]
        cursor = request.after_seq
        if cursor == 0 and not request.from_start:
            yield Watch(snapshot=self.workflow(request.id))
            cursor = len(log)
        while True:
            grew = self.grew[request.id]
            while cursor < len(log):
                yield Watch(event=log[cursor])
                cursor += 1
            await grew.wait()

    def publish(self, wf: str) -> None:
        log = self.logs[wf]
        log.append(workflow_pb2.WorkflowEvent(workflow_id=wf, seq=len(log) + 1, log=workflow_pb2.LogEvent(
            level=workflow_pb2.LOG_LEVEL_INFO, message=repr(time.time()))))
        self.grew[wf].set()
        self.grew[wf] = asyncio.Event()


async def publish_steadily(double: Double, wf: str, rate: float, offset: float) -> None:
    """`rate` events a second to `wf`, starting `offset` seconds in (the workflows take turns)."""
    next_at = time.monotonic() + offset
    while True:
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        double.publish(wf)
        next_at += 1 / rate


async def serve(port: int, count: int, rate: float) -> None:
    double = Double(count)  # type: ignore[abstract]  # serves only what the gateway calls
    server = grpc.aio.server()
    workflow_service_pb2_grpc.add_WorkflowServiceServicer_to_server(double, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("ready", flush=True)
    ids = list(double.logs)
    publishers = [asyncio.create_task(publish_steadily(double, wf, rate, i / (rate * len(ids))))
                  for i, wf in enumerate(ids)]
    try:
        await server.wait_for_termination()
    finally:
        for task in publishers:
            task.cancel()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workflows", type=int, default=10)
    parser.add_argument("--rate", type=float, default=1.0)
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.workflows, args.rate))


if __name__ == "__main__":
    main()
