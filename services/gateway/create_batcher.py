"""Concurrent creates of one token, coalesced into CreateWorkflows calls.

Acceptance is bound by the scheduler's cost per call (gRPC's own per-call work is a large
share of a small create), so the gateway sends creates that wait at the same time for the
same token in one call: the scheduler authenticates once and their rows share one group
commit. Nothing waits on purpose: a create goes out at once when fewer than MAX_IN_FLIGHT
calls of its token are in flight, and the creates that arrive meanwhile go together in the
next call (at most MAX_BATCH). A lone create is sent as CreateWorkflow, so a quiet gateway
behaves exactly as before; under load the batch size follows the load.

Each create keeps its own answer: its workflow, or its own error (what CreateWorkflow would
have raised for it); an error of the whole call (token refused, scheduler down, deadline)
is every item's. A create whose HTTP request went away before its call was sent is dropped;
once sent, it is committed or refused like a single call whose client hung up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc
from comfyfleet.scheduler.v1 import workflow_pb2, workflow_service_pb2

from services.common import logs
from services.common.errors import ComfyfleetError, from_status_bytes
from services.common.grpc_telemetry import REQUEST_ID_KEY

MAX_BATCH = 64  # at most this many creates in one call (the scheduler takes up to 256)
# Calls of one token at a time; more creates of it wait for the next call. With 2, under 32
# concurrent clients of one token, each stage waited on the other (the gateway for answers, the
# scheduler for calls) and neither process reached a core: 663 creates/s (median of six 5 s
# rounds of bench.submit); with 4, 748/s (8: 761/s, for ~20% more scheduler CPU per create).
MAX_IN_FLIGHT = 4

Workflow = workflow_pb2.Workflow
Metadata = tuple[tuple[str, str], ...]
SingleCall = Callable[[workflow_service_pb2.CreateWorkflowRequest, Metadata], Awaitable[Workflow]]
BatchCall = Callable[[workflow_service_pb2.CreateWorkflowsRequest, Metadata],
                     Awaitable[workflow_service_pb2.CreateWorkflowsResponse]]
ErrorOf = Callable[[grpc.aio.AioRpcError], ComfyfleetError]


@dataclass
class _Waiting:
    request: workflow_service_pb2.CreateWorkflowRequest
    request_id: str
    answer: asyncio.Future[Workflow] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


@dataclass
class _Token:
    waiting: list[_Waiting] = field(default_factory=list)
    in_flight: int = 0


class CreateBatcher:
    """`create(auth, request)` answers as CreateWorkflow would, sending concurrent creates of
    one token together. `single` and `batch` make the calls; `error_of` maps a failed call."""

    def __init__(self, single: SingleCall, batch: BatchCall, error_of: ErrorOf, *, max_batch: int = MAX_BATCH) -> None:
        self._max_batch = max_batch
        self._single = single
        self._batch = batch
        self._error_of = error_of
        self._tokens: dict[str, _Token] = {}
        self._calls: set[asyncio.Task[None]] = set()
        self.calls = 0  # calls made, and the creates they carried (created / calls: mean batch)
        self.created = 0

    async def create(self, auth: str, request: workflow_service_pb2.CreateWorkflowRequest) -> Workflow:
        token = self._tokens.setdefault(auth, _Token())
        waiting = _Waiting(request, logs.request_id.get())
        token.waiting.append(waiting)
        if token.in_flight < MAX_IN_FLIGHT:
            self._send(auth, token)
        return await waiting.answer

    def _send(self, auth: str, token: _Token) -> None:
        """Starts a call with the creates still wanted (at most max_batch)."""
        wanted = [w for w in token.waiting if not w.answer.done()]  # done: its request went away
        items, token.waiting = wanted[:self._max_batch], wanted[self._max_batch:]
        if not items:
            if token.in_flight == 0:
                self._tokens.pop(auth, None)
            return
        token.in_flight += 1
        self.calls += 1
        self.created += len(items)
        call = asyncio.create_task(self._call(auth, items), name="create-workflows")
        self._calls.add(call)
        call.add_done_callback(lambda done: self._sent(auth, token, done))

    def _sent(self, auth: str, token: _Token, call: asyncio.Task[None]) -> None:
        self._calls.discard(call)
        token.in_flight -= 1
        if token.waiting:
            self._send(auth, token)
        elif token.in_flight == 0 and self._tokens.get(auth) is token:
            del self._tokens[auth]

    async def _call(self, auth: str, items: list[_Waiting]) -> None:
        try:
            if len(items) == 1:
                metadata = _metadata(auth, items[0].request_id)
                _answer(items[0], await self._single(items[0].request, metadata))
                return
            request = workflow_service_pb2.CreateWorkflowsRequest(
                items=[w.request for w in items], request_ids=[w.request_id for w in items])
            response = await self._batch(request, _metadata(auth, items[0].request_id))
        except grpc.aio.AioRpcError as err:
            error = self._error_of(err)
            for waiting in items:
                _fail(waiting, error)
            return
        except BaseException as err:  # a bug, or the gateway stopping: nobody is left hanging
            for waiting in items:
                if isinstance(err, asyncio.CancelledError):
                    waiting.answer.cancel()
                else:
                    _fail(waiting, err)
            raise
        if len(response.results) != len(items):
            missing = ComfyfleetError(f"CreateWorkflows answered {len(response.results)} of {len(items)} items")
            for waiting in items:
                _fail(waiting, missing)
            return
        for waiting, result in zip(items, response.results, strict=True):
            if result.WhichOneof("outcome") == "workflow":
                _answer(waiting, result.workflow)
            else:
                _fail(waiting, from_status_bytes(result.error_status))


def _metadata(auth: str, request_id: str) -> Metadata:
    return (("authorization", auth), (REQUEST_ID_KEY, request_id)) if request_id else (("authorization", auth),)


def _answer(waiting: _Waiting, workflow: Workflow) -> None:
    if not waiting.answer.done():
        waiting.answer.set_result(workflow)


def _fail(waiting: _Waiting, error: BaseException) -> None:
    if not waiting.answer.done():
        waiting.answer.set_exception(error)
