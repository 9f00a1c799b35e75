"""The gateway serves the dashboard's files at `/` without a token, and only them: every other
path keeps the API's own 404/405 answers (the error body of API.md)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from services.gateway.app import create_app
from services.gateway.config import GatewaySettings


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    # No lifespan, so no channels: these requests never reach the scheduler or storage.
    app = create_app(GatewaySettings(port=0, rate_limit_requests=0))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as c:
        yield c


@pytest.mark.parametrize(("path", "content_type", "contains"), [
    ("/", "text/html", '<script type="module" src="app.js">'),
    ("/index.html", "text/html", "<title>comfyfleet</title>"),
    ("/app.js", "javascript", "import * as api from"),
    ("/api.js", "javascript", "Authorization: `Bearer"),
    ("/dom.js", "javascript", "textContent"),
    ("/style.css", "text/css", ".gallery"),
])
async def test_the_dashboard_files_are_served_without_a_token(
    client: httpx.AsyncClient, path: str, content_type: str, contains: str
) -> None:
    reply = await client.get(path)
    assert reply.status_code == 200
    assert content_type in reply.headers["content-type"]
    assert contains in reply.text


@pytest.mark.parametrize("path", ["/__init__.py", "/nope.js", "/v1/nope", "/dashboard/app.js"])
async def test_other_paths_are_the_apis_404(client: httpx.AsyncClient, path: str) -> None:
    reply = await client.get(path)
    assert reply.status_code == 404
    assert reply.json()["status"] == 404


async def test_a_wrong_method_on_an_api_path_is_still_405(client: httpx.AsyncClient) -> None:
    assert (await client.get("/v1/workflow/00000000-0000-0000-0000-000000000000/cancel")).status_code == 405
    assert (await client.post("/app.js")).status_code == 405
