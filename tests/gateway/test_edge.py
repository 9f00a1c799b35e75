"""The gateway's edge (services/gateway/edge.py): what every HTTP request passes before its route."""

from __future__ import annotations

from typing import Any

from services.gateway.app import _BARE_ENDINGS, _BARE_METHODS, BARE_ROUTES
from tests.gateway.conftest import AUTH, Stack


def count(metrics: str, method: str, route: str, status: int) -> float:
    prefix = f'comfyfleet_http_requests_total{{method="{method}",route="{route}",status="{status}"}} '
    return sum(float(line[len(prefix):]) for line in metrics.splitlines() if line.startswith(prefix))


async def test_every_answer_is_counted_under_its_route_template(stack: Stack) -> None:
    before = (await stack.client.get("/metrics")).text
    answers = [
        ("GET", "/v1/workflow/nope", 404, "/v1/workflow/{id}"),
        ("PATCH", "/v1/workflow", 405, "/v1/workflow"),  # the path matched, the method did not
        ("GET", "/no/such/route", 404, "other"),
    ]
    for method, path, status, _ in answers:
        reply = await stack.client.request(method, path, headers={**AUTH, "X-Request-ID": f"edge-{status}"})
        assert reply.status_code == status
        assert reply.headers["x-request-id"] == f"edge-{status}"
        assert reply.json()["status"] == status
    after = (await stack.client.get("/metrics")).text
    for method, _, status, route in answers:
        assert count(after, method, route, status) == count(before, method, route, status) + 1, (method, route)


async def test_a_refused_request_is_counted_under_the_route_it_asked_for(make_stack: Any) -> None:
    async with make_stack(rate_limit_requests=1, rate_limit_window_seconds=60) as stack:
        assert (await stack.client.get("/v1/workflow/a", headers=AUTH)).status_code == 404
        refused = await stack.client.get("/v1/workflow/b", headers={**AUTH, "X-Request-ID": "edge-429"})
        assert refused.status_code == 429 and refused.headers["x-request-id"] == "edge-429"
        metrics = (await stack.client.get("/metrics")).text  # not /v1: not limited
        assert count(metrics, "GET", "/v1/workflow/{id}", 429) == 1
        assert count(metrics, "GET", "/v1/workflow/{id}", 404) == 1


def test_the_bare_routes_pass_the_quick_check_before_their_match() -> None:
    """GatewayApp matches a request against the SSE routes only when its method and path's end
    could be theirs: a bare route outside that check would be served through the middleware."""
    for route in BARE_ROUTES:
        assert route.path.endswith(_BARE_ENDINGS), route.path
        assert route.methods is not None and route.methods <= _BARE_METHODS, route.methods
