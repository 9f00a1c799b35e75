"""A few end-to-end checks against the suite as real processes (services.devrun.Suite, as
`make run` starts it), configured through the environment: a tier limits file, the rate limit."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from services.devrun import Suite, free_port
from tests.api.forms import PLAIN


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Suite]:
    var: Path = tmp_path_factory.mktemp("suite")
    limits = var / "limits.toml"
    limits.write_text("[enterprise]\nrunners = 1\n")
    s = Suite(var_dir=var, scheduler_port=free_port(), storage_port=free_port(), gateway_port=free_port(),
              extra_env={"SCHEDULER_LIMITS_FILE": str(limits), "GATEWAY_RATE_LIMIT_REQUESTS": "1000"})
    try:
        s.up()
        yield s
    finally:
        s.down()
        for name in ("scheduler", "gateway"):
            log = var / f"{name}.log"
            if log.exists():
                sys.stderr.write(f"\n--- {name}.log (tail) ---\n" + "\n".join(log.read_text().splitlines()[-20:]))


def test_the_api_end_to_end_over_processes(suite: Suite) -> None:
    auth = {"Authorization": f"Bearer {suite.token}"}
    with httpx.Client(base_url=suite.gateway_url, headers=auth, timeout=10) as client:
        user = client.get("/v1/user").json()
        assert (user["tier"], user["limits"]["runners"]) == ("enterprise", {"max": 1, "used": 0})

        runner = client.post("/v1/runner", json={"name": "remote", "endpoint": "https://comfy.example:8188",
                                                 "headers": {"Authorization": "Bearer s3cret"}})
        assert runner.status_code == 201 and runner.json()["headers"] == {"Authorization": "Bearer ****"}
        second = client.post("/v1/runner", json={"name": "two", "endpoint": "http://10.0.0.9"})
        assert second.status_code == 403 and second.json()["message"] == "Runner limit exceeded for your tier"

        template = client.post("/v1/template", files={"name": (None, "t"), "description": (None, "d"),
                                                      "body": ("b.json", json.dumps(PLAIN).encode())}).json()
        run = client.post(f"/v1/template/{template['id']}/run", files={"$prefix": (None, "x")})
        assert run.status_code == 201 and run.json()["status"] == "accepted"

        key = {"Idempotency-Key": "e2e-rerun"}
        first = client.post(f"/v1/workflow/{run.json()['id']}/rerun", headers=key, files={"$prefix": (None, "y")})
        again = client.post(f"/v1/workflow/{run.json()['id']}/rerun", headers=key, files={"$prefix": (None, "y")})
        assert first.status_code == again.status_code == 201 and first.json() == again.json()
        assert client.get("/v1/workflow").json()["total"] == 2

        assert client.delete(f"/v1/workflow/{first.json()['id']}").status_code == 409
        assert client.post(f"/v1/workflow/{first.json()['id']}/cancel").status_code == 200
        assert client.delete(f"/v1/workflow/{first.json()['id']}").status_code == 204
        assert client.get("/v1/workflow").json()["total"] == 1

        assert client.get("/openapi.json").json()["openapi"] == "3.1.0"
        metrics = client.get("/metrics").text
        assert 'route="/v1/workflow/{id}/rerun",status="201"} 2.0' in metrics
