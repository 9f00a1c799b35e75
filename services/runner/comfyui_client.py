"""Adapter: ComfyUI's HTTP API and websocket (aiohttp), with typed results.

Only what the runner needs, shaped by the recordings in `shared/comfyui-transcripts`:

    GET  /system_stats        -> comfyui_version             (system.comfyui_version)
    GET  /object_info         -> ObjectInfo: sha256 of the body and the parsed node schemas
    POST /upload/image        -> UploadedImage               (multipart `image`, `subfolder`, `type`)
    POST /prompt              -> PromptAccepted | ComfyUIRejected (400) | ComfyUIServerError
    GET  /queue               -> QueueSnapshot
    GET  /history/{id}        -> the entry, or None while unfinished/unknown ({})
    POST /queue {"delete"}    -> (empty 200)
    POST /interrupt {"prompt_id"} -> (empty 200)
    GET  /view                -> streamed bytes and their content type (read from ComfyUI's
                                 output/ and temp/ folders instead, when given: comfyui_files.py)
    GET  /ws?clientId=        -> parsed text messages; binary frames and text messages of
                                 types the caller does not read are read and dropped

Every connection failure or timeout becomes `ComfyUIUnreachable`. `ComfyUI` is the small
interface the rest of the package depends on; `ComfyUIClient` implements it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from services.common.comfy_schemas import NodeSchema, parse_object_info
from services.runner.comfyui_files import INLINE_READ_BYTES, ComfyUIFolders, open_first, read_chunks, served_type
from services.runner.comfyui_messages import OutputFile
from services.runner.errors import ComfyUIRejected, ComfyUIServerError, ComfyUIUnreachable
from services.runner.prompt_graph import QueueSnapshot, parse_queue

log = logging.getLogger(__name__)

CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True)
class UploadedImage:
    name: str
    subfolder: str
    type: str

    @property
    def reference(self) -> str:
        """How a loader node names it: `"<subfolder>/<name>"` (PROTOCOL.md §7)."""
        return f"{self.subfolder}/{self.name}" if self.subfolder else self.name


@dataclass(frozen=True)
class PromptAccepted:
    prompt_id: str
    number: float
    node_errors: Mapping[str, Any]


@dataclass(frozen=True)
class ObjectInfo:
    """What `/object_info` said: its digest (to tell node sets apart) and the node schemas."""

    digest: str
    schemas: Mapping[str, NodeSchema]


@dataclass(frozen=True)
class Download:
    content_type: str
    chunks: AsyncIterator[bytes]


class ComfyUI(Protocol):
    """What the runner asks of one ComfyUI."""

    async def comfyui_version(self) -> str: ...
    async def object_info(self) -> ObjectInfo: ...
    async def upload_image(
        self, filename: str, content_type: str, chunks: AsyncIterable[bytes], *, subfolder: str
    ) -> UploadedImage: ...
    async def submit_prompt(self, prompt: Mapping[str, Any], *, client_id: str, prompt_id: str) -> PromptAccepted: ...
    async def queue(self) -> QueueSnapshot: ...
    async def history(self, prompt_id: str) -> dict[str, Any] | None: ...
    async def delete_pending(self, prompt_ids: list[str]) -> None: ...
    async def interrupt(self, prompt_id: str) -> None: ...
    def view(self, output: OutputFile) -> contextlib.AbstractAsyncContextManager[Download]: ...
    def websocket(
        self, client_id: str, types: frozenset[str] | None = None
    ) -> contextlib.AbstractAsyncContextManager[AsyncIterator[dict[str, Any]]]: ...


_UNREACHABLE = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, asyncio.TimeoutError)
_NOT_CONNECTED = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)


class ComfyUIClient:
    """`ComfyUI` over one aiohttp session; `close()` it when done."""

    def __init__(
        self, base_url: str, *, request_timeout_s: float = 30.0, headers: Mapping[str, str] | None = None,
        folders: ComfyUIFolders | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._folders = folders  # outputs read from ComfyUI's folders, not /view (comfyui_files.py)
        self._folders_failed = False
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=5.0, sock_read=request_timeout_s)
        self._session = aiohttp.ClientSession(timeout=self._timeout, headers=dict(headers or {}))

    async def close(self) -> None:
        await self._session.close()

    def _url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            async with self._session.request(method, self._url(path), **kwargs) as resp:
                text = await resp.text()
                if resp.status != 200:
                    raise ComfyUIServerError(
                        f"{method} {path}: HTTP {resp.status}", status=resp.status, text=text.strip()
                    )
                try:
                    return json.loads(text) if text else None
                except json.JSONDecodeError:
                    raise ComfyUIServerError(f"{method} {path}: not JSON", status=resp.status, text=text) from None
        except _UNREACHABLE as err:
            raise ComfyUIUnreachable(
                f"{method} {path}: {err or type(err).__name__}", connect_failed=isinstance(err, _NOT_CONNECTED)
            ) from err

    async def comfyui_version(self) -> str:
        body = await self._json("GET", "/system_stats")
        system = body.get("system") if isinstance(body, dict) else None
        return str(system.get("comfyui_version") or "") if isinstance(system, dict) else ""

    async def object_info(self) -> ObjectInfo:
        digest = hashlib.sha256()
        body = bytearray()
        try:
            async with self._session.get(self._url("/object_info")) as resp:
                if resp.status != 200:
                    raise ComfyUIServerError(
                        f"GET /object_info: HTTP {resp.status}", status=resp.status, text=await resp.text()
                    )
                async for chunk in resp.content.iter_chunked(CHUNK_BYTES):
                    digest.update(chunk)
                    body.extend(chunk)
        except _UNREACHABLE as err:
            raise ComfyUIUnreachable(f"GET /object_info: {err or type(err).__name__}") from err
        try:
            parsed = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ComfyUIServerError("GET /object_info: not JSON", status=200, text=bytes(body[:200]).decode(
                "utf-8", "replace")) from None
        return ObjectInfo(digest=digest.hexdigest(), schemas=parse_object_info(parsed))

    async def upload_image(
        self, filename: str, content_type: str, chunks: AsyncIterable[bytes], *, subfolder: str
    ) -> UploadedImage:
        # quote_fields=False keeps the filename as it is (aiohttp would %-encode spaces).
        form = aiohttp.FormData(quote_fields=False)
        form.add_field("image", chunks, filename=filename, content_type=content_type or "application/octet-stream")
        form.add_field("subfolder", subfolder)
        form.add_field("type", "input")
        body = await self._json("POST", "/upload/image", data=form)
        if not isinstance(body, dict) or not isinstance(body.get("name"), str):
            raise ComfyUIServerError("POST /upload/image: no name in reply", status=200, text=str(body))
        return UploadedImage(
            name=body["name"], subfolder=str(body.get("subfolder") or ""), type=str(body.get("type") or "input")
        )

    async def submit_prompt(self, prompt: Mapping[str, Any], *, client_id: str, prompt_id: str) -> PromptAccepted:
        payload = {"prompt": prompt, "client_id": client_id, "prompt_id": prompt_id}
        try:
            async with self._session.post(self._url("/prompt"), json=payload) as resp:
                text = await resp.text()
                status = resp.status
        except _UNREACHABLE as err:
            raise ComfyUIUnreachable(
                f"POST /prompt: {err or type(err).__name__}", connect_failed=isinstance(err, _NOT_CONNECTED)
            ) from err
        try:
            body = json.loads(text) if text else None
        except json.JSONDecodeError:
            body = None
        if status == 400 and isinstance(body, dict):
            raise ComfyUIRejected("ComfyUI rejected the prompt", body=body)
        if status != 200 or not isinstance(body, dict):
            raise ComfyUIServerError(f"POST /prompt: HTTP {status}", status=status, text=text.strip())
        node_errors = body.get("node_errors")
        number = body.get("number")
        return PromptAccepted(
            prompt_id=str(body.get("prompt_id") or prompt_id),
            number=float(number) if isinstance(number, int | float) else 0.0,
            node_errors=node_errors if isinstance(node_errors, dict) else {},
        )

    async def queue(self) -> QueueSnapshot:
        return parse_queue(await self._json("GET", "/queue"))

    async def history(self, prompt_id: str) -> dict[str, Any] | None:
        body = await self._json("GET", f"/history/{prompt_id}")
        entry = body.get(prompt_id) if isinstance(body, dict) else None
        return entry if isinstance(entry, dict) and entry else None

    async def delete_pending(self, prompt_ids: list[str]) -> None:
        await self._json("POST", "/queue", json={"delete": prompt_ids})

    async def interrupt(self, prompt_id: str) -> None:
        await self._json("POST", "/interrupt", json={"prompt_id": prompt_id})

    @contextlib.asynccontextmanager
    async def view(self, output: OutputFile) -> AsyncIterator[Download]:
        local = await self._open_local(output)
        if local is not None:
            content_type, chunks = local
            try:
                yield Download(content_type=content_type, chunks=chunks)
            finally:
                await chunks.aclose()
            return
        params = {"filename": output.filename, "subfolder": output.subfolder, "type": output.type}
        try:
            async with self._session.get(self._url("/view"), params=params) as resp:
                if resp.status != 200:
                    raise ComfyUIServerError(
                        f"GET /view {output.filename}: HTTP {resp.status}", status=resp.status, text=await resp.text()
                    )
                yield Download(
                    content_type=resp.content_type or "application/octet-stream",
                    chunks=resp.content.iter_chunked(CHUNK_BYTES),
                )
        except _UNREACHABLE as err:
            raise ComfyUIUnreachable(f"GET /view {output.filename}: {err or type(err).__name__}") from err

    async def _open_local(self, output: OutputFile) -> tuple[str, AsyncGenerator[bytes, None]] | None:
        """The file from ComfyUI's folder when the runner reads them; None: ask /view."""
        path = self._folders.path(output) if self._folders is not None else None
        if path is None:
            return None
        try:
            file, first = open_first(path, INLINE_READ_BYTES)  # on the loop: see comfyui_files.py
        except OSError as err:
            if not self._folders_failed:
                self._folders_failed = True
                log.warning("cannot read %s from ComfyUI's folder (%s); asking GET /view for what is not "
                            "there (is --comfyui-dir the folder ComfyUI runs in?)", output.filename, err)
            return None
        return served_type(output.filename) or "application/octet-stream", read_chunks(file, first, CHUNK_BYTES)

    @contextlib.asynccontextmanager
    async def websocket(
        self, client_id: str, types: frozenset[str] | None = None
    ) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
        """Opens `/ws?clientId=`; yields an iterator of its JSON text messages (of `types` only,
        when given).

        The iterator ends when the socket closes. Binary frames (previews) and non-JSON text
        are read and dropped. No read timeout: a prompt may run for hours in silence; a dead
        peer is found by the websocket heartbeat instead.
        """
        try:
            ws = await self._session.ws_connect(
                self._url("/ws"),
                params={"clientId": client_id},
                heartbeat=20.0,
                max_msg_size=0,
                timeout=aiohttp.ClientWSTimeout(ws_close=5.0),
            )
        except (*_UNREACHABLE, aiohttp.WSServerHandshakeError) as err:
            raise ComfyUIUnreachable(f"GET /ws: {err or type(err).__name__}") from err
        try:
            yield _messages(ws, types)
        finally:
            await ws.close()


# How ComfyUI's json.dumps starts every text message: `{"type": "<type>", "data": ...}`.
_TYPE_PREFIX = '{"type": "'


def _unwanted(text: str, types: frozenset[str]) -> bool:
    """True when `text` plainly names a type not in `types`: told without parsing it (most
    frames are `progress_state` snapshots nobody here reads). A text in any other shape
    (other key order or spacing, escapes in the type) is parsed and judged by its `type`."""
    if not text.startswith(_TYPE_PREFIX):
        return False
    end = text.find('"', len(_TYPE_PREFIX))
    kind = text[len(_TYPE_PREFIX) : end]
    return end > 0 and "\\" not in kind and kind not in types


async def _messages(ws: aiohttp.ClientWebSocketResponse, types: frozenset[str] | None) -> AsyncIterator[dict[str, Any]]:
    try:
        async for frame in ws:
            if frame.type != aiohttp.WSMsgType.TEXT:
                continue  # binary previews are dropped; close/error frames end the loop
            if types is not None and _unwanted(frame.data, types):
                continue
            try:
                message = json.loads(frame.data)
            except json.JSONDecodeError:
                continue
            if isinstance(message, dict) and (types is None or message.get("type") in types):
                yield message
    except _UNREACHABLE as err:
        log.info("ComfyUI websocket broke: %s", err or type(err).__name__)
