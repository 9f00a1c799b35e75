"""One SSE subscription read and checked the way a client sees it, for the soak test.

`read_stream` reads GET /v1/workflow/{id}/subscribe to its end (or until `stop_after` frames,
for a client that goes away mid-stream) and checks the framing on the way: a `retry:` block
first, then frames of exactly `id`, `event`, `data` (JSON) with ids rising by one, keep-alive
comments anywhere, and nothing after the terminal status. `check_log` then checks what a
whole subscription (possibly stitched from two connections) saw.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import httpx

KINDS = {"snapshot", "status", "progress", "executing", "output", "log"}
TERMINAL = {"completed", "failed", "cancelled", "invalid"}


@dataclass
class Frame:
    id: int
    event: str
    data: Any


@dataclass
class StreamRead:
    frames: list[Frame] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    ended: bool = False  # the server closed the stream (rather than the client leaving)


def is_terminal(frame: Frame) -> bool:
    return frame.event in ("status", "snapshot") and isinstance(frame.data, dict) \
        and frame.data.get("status") in TERMINAL


def _frame(block: dict[str, str], problems: list[str]) -> Frame | None:
    if set(block) != {"id", "event", "data"}:
        problems.append(f"a frame with fields {sorted(block)}")
        return None
    try:
        data = json.loads(block["data"])
        seq = int(block["id"])
    except ValueError as err:
        problems.append(f"a frame that does not parse: {err}: {block}")
        return None
    if block["event"] not in KINDS:
        problems.append(f"an unknown event kind {block['event']!r}")
    return Frame(seq, block["event"], data)


async def read_stream(client: httpx.AsyncClient, workflow_id: str, last_event_id: int | None,
                      stop_after: int | None = None) -> StreamRead:
    headers = {} if last_event_id is None else {"Last-Event-ID": str(last_event_id)}
    out = StreamRead()
    blocks = 0
    async with client.stream("GET", f"/v1/workflow/{workflow_id}/subscribe", headers=headers) as reply:
        if reply.status_code != 200 or not reply.headers.get("content-type", "").startswith("text/event-stream"):
            out.problems.append(f"subscribe answered {reply.status_code}: {(await reply.aread())[:300]!r}")
            return out
        block: dict[str, str] = {}
        async for line in reply.aiter_lines():
            if line.startswith(":"):
                continue  # a keep-alive comment
            if line:
                key, _, value = line.partition(":")
                if key in block:
                    out.problems.append(f"field {key!r} twice in one frame")
                block[key] = value[1:] if value.startswith(" ") else value
                continue
            if not block:
                continue
            blocks += 1
            if blocks == 1:
                if block != {"retry": "3000"}:
                    out.problems.append(f"the stream did not start with retry: {block}")
                block = {}
                continue
            frame = _frame(block, out.problems)
            block = {}
            if frame is None:
                continue
            if out.frames and is_terminal(out.frames[-1]):
                out.problems.append(f"frame {frame.id} ({frame.event}) after the terminal status")
            if out.frames and frame.id != out.frames[-1].id + 1:
                out.problems.append(f"frame {frame.id} after {out.frames[-1].id}")
            out.frames.append(frame)
            if stop_after is not None and len(out.frames) >= stop_after:
                return out  # the client goes away mid-stream
        if block:
            out.problems.append(f"the stream ended inside a frame: {block}")
    out.ended = True
    return out


def check_log(frames: list[Frame], *, from_start: bool) -> list[str]:
    """What one whole subscription saw: from the first event (Last-Event-ID: 0) or from a
    snapshot, every id once and in order, ending with a terminal status."""
    if not frames:
        return ["no frame at all"]
    problems = []
    ids = [f.id for f in frames]
    if ids != list(range(ids[0], ids[0] + len(ids))):
        problems.append(f"ids not consecutive: {ids}")
    if from_start and ids[0] != 1:
        problems.append(f"a replay from the start began at id {ids[0]}")
    if not from_start and frames[0].event != "snapshot":
        problems.append(f"a live subscription began with {frames[0].event}, not the snapshot")
    if not is_terminal(frames[-1]):
        problems.append(f"ended on {frames[-1].event} {frames[-1].data!r:.200}, not a terminal status")
    elif frames[-1].data["status"] != "completed":
        problems.append(f"ended {frames[-1].data['status']}: {frames[-1].data!r:.300}")
    return problems
