"""Sending a `Call`: auth header, retries on 429/503 honouring Retry-After, typed errors.

Retried (at most `Settings.max_retries` times): a 429 or 503 answer, waiting its Retry-After
(or a short backoff without one; an answer asking for longer than `max_retry_wait` is raised
at once), and a connection that could not be opened (nothing was sent). Calls that are not
safe to send twice (`retry_safe=False`) are retried only when nothing was sent. Creates carry
an Idempotency-Key, so a retried create is replayed by the API, not run twice (even after
a 503 whose outcome upstream is unknown).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import httpx

from comfyfleet.calls import Call, opened
from comfyfleet.errors import TransportError, from_response, retry_after_seconds
from comfyfleet.settings import Settings

RETRY_STATUSES = frozenset({429, 503})
USER_AGENT = "comfyfleet-python/0.1"


def auth_headers(settings: Settings) -> dict[str, str]:
    return {"Authorization": f"Bearer {settings.token}"} if settings.token else {}


def retry_delay(settings: Settings, call: Call, attempt: int, response: httpx.Response | None,
                error: httpx.TransportError | None) -> float | None:
    """Seconds to wait before sending `call` again, or None to give up. `attempt` counts from 0."""
    if attempt >= settings.max_retries:
        return None
    backoff = min(0.5 * 2**attempt, 8.0)
    if error is not None:
        return backoff if isinstance(error, httpx.ConnectError) or call.retry_safe else None
    if response is None or response.status_code not in RETRY_STATUSES or not call.retry_safe:
        return None
    after = retry_after_seconds(response)
    if after is None:
        return backoff
    return after if after <= settings.max_retry_wait else None


def _request_args(settings: Settings, call: Call) -> dict[str, Any]:
    headers = {**auth_headers(settings), **call.headers}
    args: dict[str, Any] = {"params": call.params, "json": call.json, "headers": headers}
    if call.data is not None and not call.files:
        # httpx would send text-only fields url-encoded; the API reads multipart only.
        boundary = uuid.uuid4().hex
        headers["Content-Type"] = f"multipart/form-data; boundary={boundary}"
        args["content"] = _text_multipart(call.data, boundary)
    else:
        args["data"] = call.data
    return args


def _text_multipart(fields: dict[str, str], boundary: str) -> bytes:
    out = bytearray()
    for name, value in fields.items():
        quoted = name.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")  # as browsers do
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{quoted}"\r\n\r\n'.encode()
        out += value.encode("utf-8") + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out)


def _raise_for(response: httpx.Response) -> httpx.Response:
    if response.status_code >= 400:
        raise from_response(response)
    return response


def new_client(settings: Settings, transport: httpx.BaseTransport | None = None) -> httpx.Client:
    return httpx.Client(base_url=settings.url, timeout=settings.timeout, transport=transport,
                        headers={"User-Agent": USER_AGENT})


def new_async_client(settings: Settings, transport: httpx.AsyncBaseTransport | None = None) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=settings.url, timeout=settings.timeout, transport=transport,
                             headers={"User-Agent": USER_AGENT})


def send(http: httpx.Client, settings: Settings, call: Call) -> httpx.Response:
    """Sends `call` (retrying as above) and returns the read 2xx answer, or raises."""
    attempt = 0
    while True:
        response: httpx.Response | None = None
        error: httpx.TransportError | None = None
        try:
            with opened(call.files) as files:
                response = http.request(call.method, call.path, files=files or None, **_request_args(settings, call))
        except httpx.TransportError as err:
            error = err
        delay = retry_delay(settings, call, attempt, response, error)
        if delay is None:
            if error is not None:
                raise TransportError(f"{call.method} {call.path}: {type(error).__name__}: {error}") from error
            assert response is not None
            return _raise_for(response)
        time.sleep(delay)
        attempt += 1


async def send_async(http: httpx.AsyncClient, settings: Settings, call: Call) -> httpx.Response:
    """The async `send`."""
    attempt = 0
    while True:
        response: httpx.Response | None = None
        error: httpx.TransportError | None = None
        try:
            with opened(call.files) as files:
                response = await http.request(call.method, call.path, files=files or None,
                                              **_request_args(settings, call))
        except httpx.TransportError as err:
            error = err
        delay = retry_delay(settings, call, attempt, response, error)
        if delay is None:
            if error is not None:
                raise TransportError(f"{call.method} {call.path}: {type(error).__name__}: {error}") from error
            assert response is not None
            return _raise_for(response)
        await asyncio.sleep(delay)
        attempt += 1

