"""IDs that are not UUIDs, on every route with an {id}: a 404 (API.md: "absent or not yours";
a string that is no UUID names nothing), never a 500; the services still answer afterwards."""

from __future__ import annotations

import pytest

from tests.api.conftest import Api
from tests.hostile.hostile import expect

IDS = {
    "word": "nope",
    "sql": "1' OR '1'='1",
    "sql-union": "1 UNION SELECT token_sha256 FROM tokens --",
    "uuid-with-garbage": "00000000-0000-0000-0000-000000000000x",
    "nul-byte": "%00",
    "long": "a" * 5000,
    "dotdot": "..%2f..%2fetc",
    "unicode": "%E2%80%AE%E2%80%8B",
}
ROUTES = [
    ("GET", "/v1/workflow/{}", "WORKFLOW_NOT_FOUND", "workflow not found"),
    ("POST", "/v1/workflow/{}/cancel", "WORKFLOW_NOT_FOUND", "workflow not found"),
    ("GET", "/v1/workflow/{}/outputs", "WORKFLOW_NOT_FOUND", "workflow not found"),
    ("GET", "/v1/workflow/{}/subscribe", "WORKFLOW_NOT_FOUND", "workflow not found"),
    ("DELETE", "/v1/runner/{}", "RUNNER_NOT_FOUND", "runner not found"),
    ("POST", "/v1/runner/{}/interrupt", "RUNNER_NOT_FOUND", "runner not found"),
    ("GET", "/v1/template/{}", "TEMPLATE_NOT_FOUND", "template not found"),
    ("DELETE", "/v1/template/{}", "TEMPLATE_NOT_FOUND", "template not found"),
]
# every id on the first route, then each route with one of them: distinct requests, not a full product
CASES = [(ROUTES[0], name, value) for name, value in IDS.items()] + \
        [(route, name, value) for route, (name, value) in zip(ROUTES[1:], list(IDS.items())[1:], strict=False)]


@pytest.mark.parametrize(("route", "value"),
                         [pytest.param(r, v, id=f"{r[0]} {r[1].format('')} {n}") for r, n, v in CASES])
async def test_id_that_is_not_a_uuid(api: Api, route: tuple[str, str, str, str], value: str) -> None:
    method, path, reason, message = route
    auth = await api.user("ids")
    reply = await api.client.request(method, path.format(value), headers=auth)
    if "%2f" in value:  # the decoded slashes make it another path, which no route has
        reason, message = "NOT_FOUND", "not found"
    await expect(api, reply, auth, 404, reason, message)


async def test_rerun_and_template_run_with_a_bad_id(api: Api) -> None:
    auth = await api.user("ids-post")
    reply = await api.client.post("/v1/workflow/not-a-uuid/rerun", headers=auth, files={"$a": (None, "x")})
    await expect(api, reply, auth, 404, "WORKFLOW_NOT_FOUND", "workflow not found")
    reply = await api.client.post("/v1/template/not-a-uuid/run", headers=auth, data={"name": "x"})
    await expect(api, reply, auth, 404, "TEMPLATE_NOT_FOUND", "template not found")
