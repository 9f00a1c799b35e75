"""Two scheduler processes on one Postgres, with storage, a gateway, two runners and their
ComfyUI doubles as real processes. The standby listens, says NOT_SERVING and refuses calls
until the active scheduler is SIGKILLed mid-run; then it takes over within 10 s, the gateway
and the runners follow it, and every workflow that got a 201 (before, during or after the
takeover) completes, each run exactly once by a ComfyUI."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from comfyfleet.scheduler.v1 import user_service_pb2, user_service_pb2_grpc
from grpc_health.v1 import health_pb2

from services.devrun import Suite, free_port, grpc_health
from tests.integration.fleet import TERMINAL, WORKFLOW, Fleet, png, start_double, wait_for
from tests.postgres.server import Postgres

pytestmark = pytest.mark.timeout(90)

TAKEOVER_SECONDS = 10.0
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
def fleet(tmp_path: Path, postgres: Postgres) -> Iterator[Fleet]:
    var = tmp_path / "var"
    suite = Suite(
        var_dir=var, scheduler_port=free_port(), standby_port=free_port(), storage_port=free_port(),
        gateway_port=free_port(),
        # A lease longer than the runners' reconnect backoff: they come back in time to claim their work.
        extra_env={"SCHEDULER_DATABASE_URL": postgres.url(postgres.create_database()),
                   "SCHEDULER_LEASE_SECONDS": "10", "SCHEDULER_HEARTBEAT_SECONDS": "1",
                   "GATEWAY_RATE_LIMIT_REQUESTS": "0"},
    )
    f = None
    try:
        suite.up()  # storage, the first scheduler (it becomes the active one), gateway
        suite.start("scheduler-standby")
        suite.wait_ready("scheduler-standby")
        f = Fleet(suite)
        f.add_runner("a", start_double(tmp_path / "a", 300), "gpu", slots=2)
        f.add_runner("b", start_double(tmp_path / "b", 300), "gpu", slots=1)
        yield f
    finally:
        if f is not None:
            f.close()
        else:
            suite.down()
        for log in sorted(var.glob("*.log")):
            print(f"\n--- {log.name} (tail) ---\n" + "\n".join(log.read_text().splitlines()[-15:]))


def submit(fleet: Fleet, prefix: str) -> tuple[int, str]:
    """POST /v1/workflow; (status code, workflow id or the error body)."""
    files = {"workflow_json": ("workflow.json", json.dumps(WORKFLOW), "application/json"),
             "$photo": ("photo.png", png((len(prefix) * 9 % 255, 40, 90)), "image/png")}
    reply = fleet.client.post("/v1/workflow", data={"name": prefix, "$prefix": prefix, "tags": "gpu"}, files=files)
    return reply.status_code, reply.json()["id"] if reply.status_code == 201 else reply.text


def test_the_standby_takes_over_a_killed_active_scheduler_and_no_accepted_workflow_is_lost(fleet: Fleet) -> None:
    suite = fleet.suite
    standby = f"127.0.0.1:{suite.standby_port}"
    assert grpc_health(f"127.0.0.1:{suite.scheduler_port}") == SERVING
    assert grpc_health(standby) == NOT_SERVING
    with grpc.insecure_channel(standby) as channel, pytest.raises(grpc.RpcError) as refused:
        user_service_pb2_grpc.UserServiceStub(channel).GetUser(
            user_service_pb2.GetUserRequest(), metadata=[("authorization", f"Bearer {suite.token}")], timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]

    accepted: list[str] = []
    for i in range(6):
        code, wid = submit(fleet, f"before-{i}")
        assert code == 201, wid
        accepted.append(wid)
    wait_for(lambda: any(fleet.get(w)["status"] == "running" for w in accepted), 20, "something running")

    # Clients keep submitting through the takeover; what the gateway refuses meanwhile
    # (the scheduler unreachable) is an error the client sees, never a 201 that is then lost.
    refused_codes: list[int] = []
    stop = threading.Event()

    def keep_submitting() -> None:
        i = 0
        while not stop.is_set():
            code, wid = submit(fleet, f"during-{i}")
            (accepted.append(wid) if code == 201 else refused_codes.append(code))
            i += 1
            time.sleep(0.2)

    submitter = threading.Thread(target=keep_submitting)
    submitter.start()
    try:
        time.sleep(0.5)
        suite.kill("scheduler", signal.SIGKILL)
        killed_at = time.monotonic()
        wait_for(lambda: grpc_health(standby) == SERVING, TAKEOVER_SECONDS, "the standby SERVING")
        took_over = time.monotonic() - killed_at
        print(f"\nstandby SERVING {took_over:.1f} s after SIGKILL")
        time.sleep(2.0)
    finally:
        stop.set()
        submitter.join(30)
    assert took_over < TAKEOVER_SECONDS
    assert set(refused_codes) <= {502, 503, 504}, refused_codes

    code, wid = submit(fleet, "after")
    assert code == 201, wid
    accepted.append(wid)

    print(f"{len(accepted)} workflows accepted, {len(refused_codes)} refused during the takeover ({refused_codes})")
    done = {w: fleet.wait_status(w, TERMINAL, 45) for w in accepted}
    assert {wf["status"] for wf in done.values()} == {"completed"}, done
    ran: Counter[str] = Counter()
    for double in fleet.doubles.values():
        ran.update(double.prefixes())
    # (A create cut off by the kill may have been committed without its 201: it runs too, once.)
    assert {wf["name"]: ran[wf["name"]] for wf in done.values()} == {wf["name"]: 1 for wf in done.values()}
    assert max(ran.values()) == 1, f"a workflow ran twice in ComfyUI: {ran}"
