"""The `Replayer`: drives one recorded scenario against a live server (see replay.py)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from typing import Any

import aiohttp
import yarl

from .recording import Matcher, Mismatch
from .replay import (
    WAIT_SECONDS,
    Connection,
    Options,
    Response,
    UploadFactory,
    collapse_ticks,
    compare_stream,
    describe_image,
    parse_binary,
    recorded_frame,
    summary,
)

RECORDED_HOST = "127.0.0.1:8188"


class Replayer:
    def __init__(self, session: aiohttp.ClientSession, base_url: str, matcher: Matcher, uploads: UploadFactory,
                 options: Options | None = None) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.host = yarl.URL(self.base_url).raw_authority
        self.matcher = matcher
        self.uploads = uploads
        self.options = options or Options()
        self.open: dict[int, Connection] = {}
        self._response: Response | None = None

    # -- the walk --------------------------------------------------------------------------

    async def run(self, entries: list[dict[str, Any]]) -> None:
        if self.options.renumber:
            self.matcher.number_offset = None
        owner = self._assign_frames(entries)
        counts = self._counts(entries, owner)
        latest: Connection | None = None
        for i, entry in enumerate(entries):
            where = entry["dir"]
            if where in ("http_req", "ws_send", "ws_open", "ws_closed"):
                await self._sync(counts[self.options.sync_overrides[i] + 1] if i in self.options.sync_overrides
                                 else counts[i])
            if where == "ws_open":
                latest = await self._open(entries, i, owner)
            elif where == "ws_send":
                assert latest is not None
                raw = entry["raw"] if "raw" in entry else json.dumps(entry["msg"])
                await latest.ws.send_str(raw)
            elif where == "http_req":
                self._response = await self._request(entry)
            elif where == "http_resp":
                assert self._response is not None, "response without request"
                self._check_response(entry, self._response)
                self._response = None
            elif where == "ws_closed":
                key = max(k for k, c in self.open.items() if c.label == entry.get("label"))
                await self._close(self.open.pop(key))
        for key in list(self.open):
            await self._close(self.open.pop(key))

    def _assign_frames(self, entries: list[dict[str, Any]]) -> dict[int, int]:
        """Entry index of each recorded frame -> key (entry index of the ws_open) of its socket."""
        owner: dict[int, int] = {}
        by_label: dict[Any, int] = {}
        for i, entry in enumerate(entries):
            if entry["dir"] == "ws_open":
                by_label[entry.get("label")] = i
            elif entry["dir"] == "ws":
                owner[i] = by_label[entry.get("conn")]
        return owner

    @staticmethod
    def _counts(entries: list[dict[str, Any]], owner: dict[int, int]) -> list[dict[int, int]]:
        """counts[i]: recorded frames per socket before entry i."""
        counts: list[dict[int, int]] = [{}]
        current: dict[int, int] = {}
        for i in range(len(entries)):
            if i in owner:
                current = {**current, owner[i]: current.get(owner[i], 0) + 1}
            counts.append(current)
        return counts

    # -- websockets ------------------------------------------------------------------------

    def _length(self, conn: Connection, frames: list[dict[str, Any]]) -> int:
        return len(collapse_ticks(frames)) if self.options.collapse_ticks else len(frames)

    async def _sync(self, target: dict[int, int]) -> None:
        for key, conn in self.open.items():
            wanted = self._length(conn, conn.recorded[: target.get(key, 0)])
            try:
                await asyncio.wait_for(self._await_frames(conn, wanted), WAIT_SECONDS)
            except TimeoutError:
                raise Mismatch(f"websocket {conn.label!r}: waited for {wanted} frames, got "
                               f"{self._length(conn, conn.frames)}\nrecorded: {summary(conn.recorded)}\n"
                               f"actual:   {summary(conn.frames)}") from None
            if conn.frames and conn.recorded:
                self.matcher.compare(conn.recorded[0], conn.frames[0], ("ws", str(conn.label), "connect"))

    async def _await_frames(self, conn: Connection, wanted: int) -> None:
        while self._length(conn, conn.frames) < wanted:
            conn.arrived.clear()
            await conn.arrived.wait()

    async def _open(self, entries: list[dict[str, Any]], index: int, owner: dict[int, int]) -> Connection:
        recorded = [recorded_frame(entries[i]) for i in sorted(owner) if owner[i] == index]
        if recorded and recorded[0]["frame"] == "text" and recorded[0]["msg"]["type"] == "status":
            # The recorder opened the socket in a known queue state (e.g. after a prompt finished).
            await self._await_queue(recorded[0]["msg"]["data"]["status"]["exec_info"]["queue_remaining"])
        url = self.base_url + self.matcher.to_live(entries[index]["url"])
        ws = await self.session.ws_connect(url, max_msg_size=0)
        conn = Connection(index, entries[index].get("label"), ws, recorded)
        conn.reader = asyncio.create_task(self._read(conn))
        self.open[index] = conn
        return conn

    async def _await_queue(self, remaining: int) -> None:
        for _ in range(int(WAIT_SECONDS / 0.02)):
            async with self.session.get(self.base_url + "/prompt") as resp:
                if (await resp.json())["exec_info"]["queue_remaining"] == remaining:
                    return
            await asyncio.sleep(0.02)
        raise Mismatch(f"queue never reached queue_remaining={remaining}")

    async def _read(self, conn: Connection) -> None:
        async for msg in conn.ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                conn.frames.append({"frame": "text", "msg": json.loads(msg.data)})
            elif msg.type == aiohttp.WSMsgType.BINARY:
                conn.frames.append(parse_binary(msg.data))
            conn.arrived.set()

    async def _close(self, conn: Connection) -> None:
        await self._sync({conn.key: len(conn.recorded)})
        await asyncio.sleep(0.05)  # anything unexpected that is still on its way
        await conn.ws.close()
        if conn.reader is not None:
            conn.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await conn.reader
        await asyncio.sleep(0.02)  # let the server drop the socket before the next one opens
        compare_stream(self.matcher, conn.label, conn.recorded, conn.frames, self.options.collapse_ticks)

    # -- http ------------------------------------------------------------------------------

    async def _request(self, entry: dict[str, Any]) -> Response:
        url = yarl.URL(self.base_url + self.matcher.to_live(entry["path"]))
        headers = {k: v.replace(RECORDED_HOST, self.host) for k, v in (entry.get("headers") or {}).items()}
        data: Any = None
        if "body" in entry:
            data = json.dumps(self.matcher.to_live(entry["body"])).encode()
            headers.setdefault("Content-Type", entry.get("content_type") or "application/json")
        elif "body_raw" in entry:
            data = entry["body_raw"].encode()
        elif "multipart_fields" in entry:
            data = aiohttp.FormData()
            for name, value in entry["multipart_fields"].items():
                if isinstance(value, dict):
                    content = self.uploads(value)
                    self.matcher.bind(value["sha256"], hashlib.sha256(content).hexdigest())
                    data.add_field(name, content, filename=value["filename"], content_type=value["content_type"])
                else:
                    data.add_field(name, value)
        async with self.session.request(entry["method"], url, headers=headers, data=data) as resp:
            return Response(resp.status, resp.headers.get("Content-Type"), dict(resp.headers), await resp.read())

    def _check_response(self, entry: dict[str, Any], resp: Response) -> None:
        where = f"{entry['method']} {entry['path']}"
        try:
            self._compare_response(entry, resp, where)
        except Mismatch as err:
            raise Mismatch(f"{where}: {err}\nbody: {resp.body[:600]!r}") from None

    def _compare_response(self, entry: dict[str, Any], resp: Response, where: str) -> None:
        if (entry["status"], entry["content_type"]) != (resp.status, resp.content_type):
            raise Mismatch(f"status/content type {entry['status']} {entry['content_type']!r} recorded, "
                           f"got {resp.status} {resp.content_type!r}")
        for name, value in (entry.get("headers") or {}).items():
            self.matcher.compare(value, resp.headers.get(name), (where, "headers", name))
        if "body" in entry:
            self.matcher.compare(entry["body"], json.loads(resp.body), (where,))
        elif "body_text" in entry:
            if resp.body.decode() != entry["body_text"]:
                raise Mismatch(f"text {entry['body_text']!r} recorded, got {resp.body.decode()!r}")
        else:
            head, recorded_head = resp.body[:16].hex(), entry["body_head_hex"]
            if head.startswith("52494646"):  # RIFF (webp): bytes 4..8 are the file size
                head, recorded_head = head[:8] + head[16:], recorded_head[:8] + recorded_head[16:]
            if head != recorded_head:
                raise Mismatch(f"body starts {resp.body[:16].hex()}, recorded {entry['body_head_hex']}")
            if not entry["path"].startswith(self.options.opaque_bodies or ("\0",)):
                got = (len(resp.body), hashlib.sha256(resp.body).hexdigest())
                if got != (entry["body_len"], entry["body_sha256"]):
                    raise Mismatch(f"body {got} differs from the recorded {entry['body_len']}, "
                                   f"{entry['body_sha256']}")
            if "image" in entry:
                self.matcher.compare(entry["image"], describe_image(resp.body), (where, "image"))
