"""Replaying a recorded scenario against a live server and comparing what comes back.

The replay walks the transcript in order. Client actions (HTTP requests, opening, writing to and
closing websockets) are sent as recorded. Before each action it waits until every open socket
has received as many frames as the recording shows before that action: the recorder's own
causality ("it saw X, then it asked Y"). A scenario can move that sync point earlier
(`Options.sync_overrides`) where the recording shows a race the double resolves differently.

HTTP responses are compared at once: status, content type, the recorded headers, the JSON body
(`recording.Matcher`), the text body, or for files the bytes (length + sha256) and the decoded
image. A socket's frames are compared when the recording closes it:

- all frames except `status` in exactly the recorded order;
- the `status` frames in the recorded order (their queue_remaining values);
- a `status` frame may sit elsewhere among the other frames, because broadcasts caused by HTTP
  requests race with the worker on the real server as well, except the worker's own: the one
  just before `execution_start` and the one right after a terminal event keep their place.
"""

from __future__ import annotations

import asyncio
import io
import json
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from PIL import Image

from .recording import Matcher, Mismatch

TERMINAL = {"execution_success", "execution_error", "execution_interrupted"}
WAIT_SECONDS = 20.0

UploadFactory = Callable[[dict[str, Any]], bytes]


@dataclass
class Options:
    sync_overrides: dict[int, int] = field(default_factory=dict)  # action index -> last frame index to await
    collapse_ticks: bool = False  # compare runs of progress ticks as one item (interrupt lands anywhere)
    opaque_bodies: tuple[str, ...] = ()  # paths whose bytes derive from our own uploads: no length/sha check
    renumber: bool = False  # the recorded counter jumps before this scenario: learn a new offset


@dataclass
class Response:
    status: int
    content_type: str | None
    headers: dict[str, str]
    body: bytes


@dataclass
class Connection:
    key: int
    label: str | None
    ws: aiohttp.ClientWebSocketResponse
    recorded: list[dict[str, Any]] = field(default_factory=list)
    frames: list[dict[str, Any]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    reader: asyncio.Task[None] | None = None


def describe_image(data: bytes) -> dict[str, Any]:
    """The `image` field of the recordings: format, mode, size and PNG text chunks."""
    with Image.open(io.BytesIO(data)) as img:
        out: dict[str, Any] = {"format": img.format, "mode": img.mode, "size": list(img.size)}
        text = dict(getattr(img, "text", {}) or {})
    if text:
        out["text_chunk_keys"] = list(text)
        chunks: dict[str, Any] = {}
        for key, value in text.items():
            try:
                chunks[key] = json.loads(value)
            except ValueError:
                chunks[key] = value
        out["text_chunks"] = chunks
    return out


def parse_binary(data: bytes) -> dict[str, Any]:
    """A binary websocket frame in the recordings' `parsed` form."""
    event = struct.unpack(">I", data[:4])[0]
    frame: dict[str, Any] = {"frame": "binary", "event_type": event, "head_hex": data[:16].hex()}
    if event == 1:
        code = struct.unpack(">I", data[4:8])[0]
        image = data[8:]
        frame["parsed"] = {"event": "PREVIEW_IMAGE", "image_format_code": code,
                           "image_format": {1: "JPEG", 2: "PNG"}.get(code), "image_len": len(image),
                           "image": describe_image(image)}
    elif event == 4:
        length = struct.unpack(">I", data[4:8])[0]
        image = data[8 + length :]
        frame["parsed"] = {"event": "PREVIEW_IMAGE_WITH_METADATA", "metadata_len": length,
                           "metadata": json.loads(data[8 : 8 + length]), "image_len": len(image),
                           "image": describe_image(image)}
    return frame


def recorded_frame(entry: dict[str, Any]) -> dict[str, Any]:
    if entry["frame"] == "text":
        return {"frame": "text", "msg": entry["msg"]}
    frame = {"frame": "binary", "event_type": entry["event_type"], "head_hex": entry["head_hex"]}
    return {**frame, "parsed": entry["parsed"]}


def kind(frame: dict[str, Any]) -> str:
    return frame["msg"]["type"] if frame["frame"] == "text" else frame["frame"]


def _tick(frames: list[dict[str, Any]], i: int) -> tuple[str, int, int, int] | None:
    """(node, value, max, frame count) if frames[i:] starts a progress tick group."""
    if i >= len(frames) or kind(frames[i]) != "progress_state":
        return None
    running = [(n, s) for n, s in frames[i]["msg"]["data"]["nodes"].items() if s["state"] == "running"]
    if len(running) != 1 or type(running[0][1]["value"]) is not int:
        return None
    node, state = running[0]
    rest = [kind(f) for f in frames[i + 1 : i + 3]]
    if rest in (["progress", "binary"], ["binary", "progress"]):
        return node, state["value"], state["max"], 3
    return (node, state["value"], state["max"], 2) if rest[:1] == ["progress"] else None


def collapse_ticks(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs of consecutive progress ticks of one node become one item (first value, completed?)."""
    out: list[dict[str, Any]] = []
    i = 0
    while i < len(frames):
        group = _tick(frames, i)
        if group is None:
            out.append(frames[i])
            i += 1
            continue
        node, first, total, size = group
        last, i = first, i + size
        while (more := _tick(frames, i)) is not None and more[0] == node and more[1] == last + 1:
            last, i = more[1], i + more[3]
        out.append({"frame": "ticks", "node": node, "first": first, "max": total, "completed": last == total - 1})
    return out


def summary(frames: list[dict[str, Any]]) -> str:
    parts = []
    for f in frames:
        if f["frame"] == "text":
            data = f["msg"].get("data", {})
            detail = data.get("node") or data.get("status", {}).get("exec_info", {}).get("queue_remaining", "")
            parts.append(f"{kind(f)}({detail})")
        else:
            parts.append(f["frame"])
    return ", ".join(parts)


def pinned_statuses(frames: list[dict[str, Any]]) -> list[tuple[int, bool]]:
    """Per status frame: (other frames before it, whether its place is fixed)."""
    result = []
    others = [f for f in frames if kind(f) != "status"]
    seen = 0
    for f in frames:
        if kind(f) != "status":
            seen += 1
            continue
        before = others[seen - 1] if seen else None
        after = others[seen] if seen < len(others) else None
        fixed = (after is not None and kind(after) == "execution_start") or (
            before is not None and kind(before) in TERMINAL)
        result.append((seen, fixed))
    return result


def compare_stream(matcher: Matcher, label: Any, recorded: list[dict[str, Any]], actual: list[dict[str, Any]],
                   collapse: bool) -> None:
    if collapse:
        recorded, actual = collapse_ticks(recorded), collapse_ticks(actual)
    context = f"\nrecorded: {summary(recorded)}\nactual:   {summary(actual)}"
    rec_other = [f for f in recorded if kind(f) != "status"]
    act_other = [f for f in actual if kind(f) != "status"]
    rec_status = [f for f in recorded if kind(f) == "status"]
    act_status = [f for f in actual if kind(f) == "status"]
    try:
        if [kind(f) for f in rec_other] != [kind(f) for f in act_other] or len(rec_status) != len(act_status):
            raise Mismatch("frame types differ")
        for i, (r, a) in enumerate(zip(rec_other, act_other, strict=True)):
            matcher.compare(r, a, ("ws", str(label), "frame", i))
        for i, (r, a) in enumerate(zip(rec_status, act_status, strict=True)):
            matcher.compare(r, a, ("ws", str(label), "status", i))
        for i, ((rec_at, fixed), (act_at, _)) in enumerate(
                zip(pinned_statuses(recorded), pinned_statuses(actual), strict=True)):
            if fixed and rec_at != act_at:
                raise Mismatch(f"status #{i} is the worker's own and must follow {rec_at} other frames, "
                               f"follows {act_at}")
    except Mismatch as err:
        raise Mismatch(f"websocket {label!r}: {err}{context}") from None
