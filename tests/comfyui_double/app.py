"""The server: aiohttp app, origin check, websocket, message publisher and the prompt worker.

As in ComfyUI's server.py, every event goes through one FIFO (`send_sync`, callable from any
thread) that a publisher task drains, so `status` broadcasts and execution events keep the
order in which they were produced. One socket is kept per clientId; `status` goes to all
sockets, execution events only to the socket of the prompt's client_id (or to all when a
message is broadcast with no client id).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ipaddress
import json
import logging
import os
import shutil
import socket
import struct
import tempfile
import threading
import urllib.parse
import uuid
from typing import Any

import aiohttp
from aiohttp import web
from PIL import Image

from .executor import PREVIEW_IMAGE, PREVIEW_IMAGE_WITH_METADATA, UNENCODED_PREVIEW_IMAGE, PromptExecutor
from .files import Folders, Handler, file_routes
from .images import preview_png
from .prompt_queue import PromptQueue
from .routes import MAX_UPLOAD_SIZE, api_routes, server_features

log = logging.getLogger("comfyui_double")


def is_loopback(host: str | None) -> bool:
    """server.is_loopback: an IP literal, or a name that resolves only to loopback addresses."""
    if host is None:
        return False
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host).is_loopback
    loopback = False
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            for _, _, _, _, sockaddr in socket.getaddrinfo(host, None, family, socket.SOCK_STREAM):
                if not ipaddress.ip_address(sockaddr[0]).is_loopback:
                    return loopback
                loopback = True
        except socket.gaierror:
            pass
    return loopback


@web.middleware
async def origin_only_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """403 (empty) when a loopback Host meets an Origin of another host:port; OPTIONS -> 200."""
    if "Host" in request.headers and "Origin" in request.headers:
        host_domain: str | None = request.headers["Host"].lower()
        origin = urllib.parse.urlparse(request.headers["Origin"])
        origin_domain: str | None = origin.netloc.lower()
        host = urllib.parse.urlsplit("//" + (host_domain or ""))
        loopback = is_loopback(host.hostname)
        if origin.port is None:  # a port on one side only is ignored (odd browsers)
            host_domain = host.hostname
        if host.port is None:
            origin_domain = origin.hostname
        if loopback and host_domain and origin_domain and host_domain != origin_domain:
            log.warning("request with non matching host and origin %s != %s, returning 403", host_domain,
                        origin_domain)
            return web.Response(status=403)
    if request.method == "OPTIONS":
        return web.Response()
    return await handler(request)


class ComfyUIDouble:
    """A ComfyUI 0.3.64 stand-in. `await start()` returns the bound port; `await stop()`."""

    def __init__(self, root: str | os.PathLike[str], host: str = "127.0.0.1", port: int = 0,
                 node_delay_ms: float = 0) -> None:
        self.folders = Folders.under(os.path.realpath(root))
        self.host = host
        self.port = port
        self.node_delay_ms = node_delay_ms
        self.sockets: dict[str, web.WebSocketResponse] = {}
        self.sockets_metadata: dict[str, dict[str, Any]] = {}
        self.client_id: str | None = None
        self.last_node_id: str | None = None
        self.number = 0
        self.interrupt = threading.Event()
        self.stopping = threading.Event()
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="comfyui-double")
        self.prompt_queue = PromptQueue(self.queue_updated)
        self.executor = PromptExecutor(self)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._messages: asyncio.Queue[tuple[str | int, Any, str | None]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._runner: web.AppRunner | None = None
        self._web_root = ""
        self._preview: tuple[Image.Image | None, bytes] = (None, b"")

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> int:
        for folder in (self.folders.input, self.folders.output):
            os.makedirs(folder, exist_ok=True)
        shutil.rmtree(self.folders.temp, ignore_errors=True)  # the server wipes temp/ on start
        os.makedirs(self.folders.temp)
        self._loop = asyncio.get_running_loop()
        self._web_root = tempfile.mkdtemp(prefix="comfyui-double-web-")
        self._runner = web.AppRunner(self._build_app(), shutdown_timeout=2.0, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        self._tasks = [asyncio.create_task(self._publish()), asyncio.create_task(self._worker())]
        return self.port

    async def stop(self) -> None:
        self.stopping.set()
        self.interrupt.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for ws in list(self.sockets.values()):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 1.0)
        if self._runner is not None:
            await self._runner.cleanup()
        await asyncio.to_thread(self.pool.shutdown, True)
        shutil.rmtree(self.folders.temp, ignore_errors=True)  # and on exit
        shutil.rmtree(self._web_root, ignore_errors=True)

    async def __aenter__(self) -> ComfyUIDouble:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _build_app(self) -> web.Application:
        app = web.Application(middlewares=[origin_only_middleware], client_max_size=MAX_UPLOAD_SIZE)
        routes = [*api_routes(self), *file_routes(self.folders), ("GET", "/ws", self.websocket_handler)]
        for method, path, handler in routes:
            app.router.add_route(method, "/api" + path, handler)
        for method, path, handler in routes:
            app.router.add_route(method, path, handler)
        # Unknown GETs fall through to the static web root: 404 with an empty body.
        app.router.add_static("/", self._web_root)
        return app

    # -- messages --------------------------------------------------------------------------

    def queue_info(self) -> dict[str, Any]:
        return {"exec_info": {"queue_remaining": self.prompt_queue.tasks_remaining()}}

    def queue_updated(self) -> None:
        self.send_sync("status", {"status": self.queue_info()})

    def send_sync(self, event: str | int, data: Any, sid: str | None = None) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._messages.put_nowait, (event, data, sid))

    def supports_preview_metadata(self, sid: str | None) -> bool:
        flags = self.sockets_metadata.get(sid, {}).get("feature_flags", {}) if sid is not None else {}
        return isinstance(flags, dict) and flags.get("supports_preview_metadata", False) is True

    async def _publish(self) -> None:
        while True:
            event, data, sid = await self._messages.get()
            await self.send(event, data, sid)

    async def send(self, event: str | int, data: Any, sid: str | None = None) -> None:
        if event == UNENCODED_PREVIEW_IMAGE:
            image_type, image, _ = data
            header = struct.pack(">I", 1 if image_type == "JPEG" else 2)
            await self.send_bytes(PREVIEW_IMAGE, header + self._png(image), sid)
        elif event == PREVIEW_IMAGE_WITH_METADATA:
            (image_type, image, _), metadata = data
            metadata["image_type"] = "image/png" if image_type == "PNG" else "image/jpeg"
            meta = json.dumps(metadata).encode("utf-8")
            await self.send_bytes(PREVIEW_IMAGE_WITH_METADATA, struct.pack(">I", len(meta)) + meta + self._png(image),
                                  sid)
        elif isinstance(data, bytes | bytearray):
            await self.send_bytes(int(event), bytes(data), sid)
        else:
            await self._deliver({"type": event, "data": data}, sid)

    def _png(self, image: Image.Image) -> bytes:
        if self._preview[0] is not image:  # batches repeat one image object: encode it once
            self._preview = (image, preview_png(image))
        return self._preview[1]

    async def send_bytes(self, event: int, data: bytes, sid: str | None = None) -> None:
        await self._deliver(struct.pack(">I", event) + data, sid)

    async def _deliver(self, message: dict[str, Any] | bytes, sid: str | None) -> None:
        targets = list(self.sockets.values()) if sid is None else [self.sockets[sid]] if sid in self.sockets else []
        for ws in targets:
            try:
                if isinstance(message, bytes):
                    await ws.send_bytes(message)
                else:
                    await ws.send_json(message)
            except (aiohttp.ClientError, ConnectionError) as err:
                log.warning("send error: %s", err)

    # -- websocket -------------------------------------------------------------------------

    async def websocket_handler(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sid = request.rel_url.query.get("clientId", "")
        if sid:
            self.sockets.pop(sid, None)  # reusing a session: the old socket gets nothing more
        else:
            sid = uuid.uuid4().hex
        self.sockets[sid] = ws
        self.sockets_metadata[sid] = {"feature_flags": {}}
        try:
            await self.send("status", {"status": self.queue_info(), "sid": sid}, sid)
            if self.client_id == sid and self.last_node_id is not None:
                await self.send("executing", {"node": self.last_node_id}, sid)
            first_message = True
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    try:
                        data = json.loads(msg.data)
                        if first_message and data.get("type") == "feature_flags":
                            self.sockets_metadata[sid]["feature_flags"] = data.get("data", {})
                            await self.send("feature_flags", server_features(), sid)
                        first_message = False
                    except json.JSONDecodeError:
                        log.warning("invalid JSON received from client %s", sid)
                    except Exception as err:  # e.g. a JSON list: does not use up the first-message slot
                        log.error("error processing websocket message: %s", err)
        finally:
            # As in the server, this also drops a newer socket that reconnected with the same clientId.
            self.sockets.pop(sid, None)
            self.sockets_metadata.pop(sid, None)
        return ws

    # -- worker ----------------------------------------------------------------------------

    async def _worker(self) -> None:
        while True:
            taken = await self.prompt_queue.get()
            if taken is not None:
                await self._run_item(*taken)
            if self.prompt_queue.take_flags().get("free_memory", False):
                self.executor.reset()

    async def _run_item(self, item: tuple[Any, ...], task_id: int) -> None:
        _, prompt_id, prompt, extra_data, outputs, sensitive = item
        executor = self.executor
        try:
            await executor.execute(prompt, prompt_id, {**extra_data, **sensitive}, outputs)
        except Exception:
            log.exception("prompt %s failed inside the double", prompt_id)
            executor.success = False
        status = {"status_str": "success" if executor.success else "error", "completed": executor.success,
                  "messages": [list(m) for m in executor.status_messages]}
        self.prompt_queue.task_done(task_id, executor.history_result, status)
        if self.client_id is not None:
            self.send_sync("executing", {"node": None, "prompt_id": prompt_id}, self.client_id)
