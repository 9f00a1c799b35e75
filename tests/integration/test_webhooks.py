"""Webhooks over real processes (storage, scheduler, gateway, a runner and the ComfyUI double),
delivering to a local aiohttp receiver on loopback (allowed here by SCHEDULER_WEBHOOK_ALLOW_*).

The receiver checks nothing itself: it records each request, and the tests verify the
signatures with the Standard Webhooks algorithm computed here, using the secret the API showed.
Retries run on a sub-second schedule (SCHEDULER_WEBHOOK_RETRY) with little jitter, so the
growing gaps between attempts can be asserted.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from services.devrun import ROOT, free_port
from tests.integration.fleet import Fleet, fleet_suite, start_double, wait_for

# 0.5 s doubling, jitter of at most a tenth of each wait: attempt gaps ~[0.45, 0.5], [0.9, 1.0], ...
# (production's full jitter is tested in tests/scheduler/webhooks/test_backoff.py)
RETRY = "0.5,10,120,0.1"


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    """An aiohttp server on its own thread: records every POST; answers per path."""

    port: int = field(default_factory=free_port)
    requests: list[Received] = field(default_factory=list)
    # path -> status codes to answer in turn (the last one repeats); default 200
    script: dict[str, list[int]] = field(default_factory=dict)
    delay: dict[str, float] = field(default_factory=dict)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def at(self, path: str) -> list[Received]:
        return [r for r in list(self.requests) if r.path == path]

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.requests.append(Received(request.path, headers, body, time.monotonic()))
        if (pause := self.delay.get(request.path)) is not None:
            await asyncio.sleep(pause)
        codes = self.script.get(request.path, [200])
        status = codes.pop(0) if len(codes) > 1 else codes[0]
        return web.Response(status=status, text="ok" if status < 300 else "nope")

    def start(self) -> None:
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        async def serve() -> None:
            app = web.Application()
            app.router.add_post("/{tail:.*}", self._handle)
            self.runner = web.AppRunner(app, access_log=None)
            await self.runner.setup()
            await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
            ready.set()

        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(serve(), self.loop)
        assert ready.wait(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def verify(secret: str, received: Received) -> bool:
    """The Standard Webhooks check, written out here independently of the product's code."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{received.headers['webhook-id']}.{received.headers['webhook-timestamp']}.".encode() + received.body
    expected = "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(hmac.compare_digest(expected, s) for s in received.headers["webhook-signature"].split())


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.start()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    var = tmp_path_factory.mktemp("webhooks")
    with fleet_suite(var, SCHEDULER_WEBHOOK_ALLOW_HTTP="1", SCHEDULER_WEBHOOK_ALLOW_NETS="127.0.0.0/8,::1",
                     SCHEDULER_WEBHOOK_RETRY=RETRY, SCHEDULER_WEBHOOK_TIMEOUT_SECONDS="2",
                     SCHEDULER_WEBHOOK_SWEEP_SECONDS="0.5") as f:
        f.add_runner("a", start_double(var / "comfyui-a", node_delay_ms=20))
        yield f


def register(fleet: Fleet, url: str, events: list[str] | None = None) -> dict[str, Any]:
    reply = fleet.client.post("/v1/webhook", json={"url": url, **({"events": events} if events else {})})
    assert reply.status_code == 201, reply.text
    return dict(reply.json())


def deliveries(fleet: Fleet, webhook_id: str) -> list[dict[str, Any]]:
    reply = fleet.client.get(f"/v1/webhook/{webhook_id}/deliveries")
    assert reply.status_code == 200, reply.text
    return list(reply.json()["deliveries"])


def another_user(fleet: Fleet) -> str:
    """An API token of a new user, made in the scheduler's database as `admin` would."""
    make = ("import asyncio\n"
            "from services.scheduler.config import Settings\n"
            "from services.scheduler.db.engine import Database\n"
            "from services.scheduler.db.identity_store import API, IdentityStore\n"
            "async def main():\n"
            "    db = Database(Settings.from_env().database_url)\n"
            "    identity = IdentityStore(db)\n"
            "    user = await identity.create_user('other', tier='enterprise')\n"
            "    print(await identity.issue_token(user.id, API))\n"
            "    await db.close()\n"
            "asyncio.run(main())\n")
    out = subprocess.run([sys.executable, "-c", make], cwd=ROOT, env=fleet.suite._env(), check=True,
                         capture_output=True, text=True, timeout=60).stdout
    return out.strip().splitlines()[-1]


def submit_with_hook(fleet: Fleet, prefix: str, webhook_url: str) -> Any:
    from tests.integration.fleet import WORKFLOW, png

    return fleet.client.post("/v1/workflow", data={"name": prefix, "$prefix": prefix, "webhook_url": webhook_url},
                             files={"workflow_json": ("w.json", json.dumps(WORKFLOW), "application/json"),
                                    "$photo": ("p.png", png((1, 2, 3)), "image/png")})


def test_signed_delivery_retried_on_500_with_growing_gaps_then_redelivered(fleet: Fleet, receiver: Receiver) -> None:
    receiver.script["/flaky"] = [500, 500, 200]
    hook = register(fleet, receiver.url("/flaky"), ["status.completed"])
    secret = hook["secret"]
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) >= 24
    assert "secret" not in fleet.client.get(f"/v1/webhook/{hook['id']}").json()  # shown once
    stored = b"".join(p.read_bytes() for p in fleet.suite.var_dir.glob("scheduler.db*"))
    assert secret.encode() not in stored and secret[6:].encode() not in stored  # sealed at rest
    workflow_id = fleet.submit("hooked")
    fleet.wait_status(workflow_id, {"completed"}, 60)

    tries = wait_for(lambda: len(r := receiver.at("/flaky")) >= 3 and r, 30, "three tries")
    assert len(receiver.at("/flaky")) == 3
    assert all(verify(secret, t) for t in tries)
    assert len({t.headers["webhook-id"] for t in tries}) == 1  # one message, retried
    body = json.loads(tries[0].body)
    assert body["type"] == "status.completed" and body["data"]["workflow_id"] == workflow_id
    assert body["data"]["workflow"]["status"] == "completed"
    gaps = [b.at - a.at for a, b in itertools.pairwise(tries)]
    assert 0.3 < gaps[0] < gaps[1], gaps

    log = wait_for(lambda: (d := deliveries(fleet, hook["id"])) and d[0]["state"] == "succeeded" and d, 10, "logged")
    assert len(log) == 1 and log[0]["id"] == tries[0].headers["webhook-id"]
    assert log[0]["workflow_id"] == workflow_id and log[0]["event_type"] == "status.completed"
    assert [a["status_code"] for a in log[0]["attempts"]] == [200, 500, 500]  # newest first
    assert all(a["duration_ms"] >= 0 and a["attempted_at"] for a in log[0]["attempts"])

    redelivered = fleet.client.post(f"/v1/webhook/{hook['id']}/deliveries/{log[0]['id']}/redeliver")
    assert redelivered.status_code == 200 and redelivered.json()["state"] == "pending"
    again = wait_for(lambda: len(r := receiver.at("/flaky")) >= 4 and r, 10, "redelivery")[3]
    assert again.headers["webhook-id"] == log[0]["id"] and verify(secret, again)
    wait_for(lambda: len(deliveries(fleet, hook["id"])[0]["attempts"]) == 4, 10, "redelivery logged")
    assert fleet.client.delete(f"/v1/webhook/{hook['id']}").status_code == 204


def test_denied_targets_are_refused_with_the_error_body(fleet: Fleet) -> None:
    for url in ("http://10.0.0.1/hook", "http://169.254.169.254/latest", "http://[::ffff:192.168.0.1]/",
                "http://0.0.0.0:8080/"):
        reply = fleet.client.post("/v1/webhook", json={"url": url})
        assert reply.status_code == 400, reply.text
        assert reply.json()["reason"] == "WEBHOOK_TARGET_DENIED" and reply.json()["status"] == 400
    bad = fleet.client.post("/v1/webhook", json={"url": "https://example.com/", "events": ["nope"]})
    assert bad.status_code == 400 and bad.json()["reason"] == "INVALID_EVENT_FILTER"
    refused = submit_with_hook(fleet, "denied", "http://192.168.1.5/hook")
    assert refused.status_code == 400 and refused.json()["reason"] == "WEBHOOK_TARGET_DENIED"
    assert refused.json()["details"][0]["field"] == "webhook_url"


def test_a_workflow_webhook_url_gets_its_completed_event(fleet: Fleet, receiver: Receiver) -> None:
    reply = submit_with_hook(fleet, "own-url", receiver.url("/own"))
    assert reply.status_code == 201, reply.text
    workflow_id = reply.json()["id"]
    fleet.wait_status(workflow_id, {"completed"}, 60)
    got = wait_for(lambda: [r for r in receiver.at("/own") if b"status.completed" in r.body], 20, "completed event")
    secret = fleet.client.get("/v1/webhook-secret").json()["secret"]
    assert verify(secret, got[0])

    def settled() -> dict[str, Any] | None:
        log: dict[str, Any] = fleet.client.get(f"/v1/workflow/{workflow_id}/webhook-deliveries").json()
        done = {d["state"] for d in log["deliveries"]} == {"succeeded"}
        return log if done and len(receiver.at("/own")) == log["total"] else None

    log = wait_for(settled, 20, "every status change delivered")
    assert all(d["webhook_id"] is None for d in log["deliveries"])
    assert [d["event_seq"] for d in log["deliveries"]] == sorted((d["event_seq"] for d in log["deliveries"]),
                                                                 reverse=True)  # newest first
    bodies = sorted((json.loads(r.body) for r in receiver.at("/own")), key=lambda b: b["data"]["seq"])
    types = [b["type"] for b in bodies]  # (attempts run concurrently: arrival order is not event order)
    assert types[0] == "status.accepted" and types[-1] == "status.completed"
    assert all(t.startswith("status.") for t in types) and len(set(types)) == len(types)
    assert all(verify(secret, r) for r in receiver.at("/own"))


def test_a_template_run_with_a_webhook_url(fleet: Fleet, receiver: Receiver) -> None:
    from tests.integration.fleet import WORKFLOW, png

    made = fleet.client.post("/v1/template", files={"name": (None, "t"), "description": (None, "d"),
                                                    "body": ("b.json", json.dumps(WORKFLOW), "application/json")})
    assert made.status_code == 201, made.text
    run = fleet.client.post(f"/v1/template/{made.json()['id']}/run",
                            data={"$prefix": "templated", "webhook_url": receiver.url("/templated")},
                            files={"$photo": ("p.png", png((4, 5, 6)), "image/png")})
    assert run.status_code == 201, run.text
    fleet.wait_status(run.json()["id"], {"completed"}, 60)
    wait_for(lambda: any(b"status.completed" in r.body for r in receiver.at("/templated")), 20, "templated event")
    assert all(json.loads(r.body)["data"]["workflow_id"] == run.json()["id"] for r in receiver.at("/templated"))


def test_another_users_webhooks_are_404(fleet: Fleet, receiver: Receiver) -> None:
    hook = register(fleet, receiver.url("/mine"))
    other = {"Authorization": f"Bearer {another_user(fleet)}"}
    for method, path in (("GET", f"/v1/webhook/{hook['id']}"), ("GET", f"/v1/webhook/{hook['id']}/deliveries"),
                         ("DELETE", f"/v1/webhook/{hook['id']}"),
                         ("POST", f"/v1/webhook/{hook['id']}/deliveries/x/redeliver")):
        reply = fleet.client.request(method, path, headers=other)
        assert reply.status_code == 404 and reply.json()["reason"] == "WEBHOOK_NOT_FOUND", (path, reply.text)
    moved = fleet.client.put(f"/v1/webhook/{hook['id']}", json={"url": receiver.url("/theirs")}, headers=other)
    assert moved.status_code == 404 and moved.json()["reason"] == "WEBHOOK_NOT_FOUND", moved.text
    assert fleet.client.get(f"/v1/webhook/{hook['id']}").json()["url"] == receiver.url("/mine")
    assert fleet.client.get("/v1/webhook", headers=other).json() == {"webhooks": [], "total": 0}
    mine = fleet.submit("tenancy")
    reply = fleet.client.get(f"/v1/workflow/{mine}/webhook-deliveries", headers=other)
    assert reply.status_code == 404 and reply.json()["reason"] == "WORKFLOW_NOT_FOUND"
    assert fleet.client.get(f"/v1/workflow/{mine}/webhook-deliveries").json() == {"deliveries": [], "total": 0}
    theirs = fleet.client.get("/v1/webhook-secret", headers=other).json()["secret"]
    assert theirs != fleet.client.get("/v1/webhook-secret").json()["secret"]  # one per user
    for i in range(20):
        reply = fleet.client.post("/v1/webhook", json={"url": receiver.url(f"/n{i}")}, headers=other)
        assert reply.status_code == 201, reply.text
    over = fleet.client.post("/v1/webhook", json={"url": receiver.url("/n20")}, headers=other)
    assert over.status_code == 403 and over.json()["reason"] == "WEBHOOK_LIMIT_EXCEEDED"
    listed = fleet.client.get("/v1/webhook?per_page=7&page=3", headers=other).json()
    assert listed["total"] == 20 and len(listed["webhooks"]) == 6
    assert fleet.client.delete(f"/v1/webhook/{hook['id']}").status_code == 204


def test_an_updated_endpoint_keeps_its_secret_and_takes_its_pending_deliveries(fleet: Fleet,
                                                                             receiver: Receiver) -> None:
    receiver.script["/moving"] = [503]  # the old address keeps failing: the delivery stays pending
    hook = register(fleet, receiver.url("/moving"), ["status.completed"])
    workflow_id = fleet.submit("moving")
    fleet.wait_status(workflow_id, {"completed"}, 60)
    first = wait_for(lambda: receiver.at("/moving"), 20, "an attempt at the old url")[0]

    reply = fleet.client.put(f"/v1/webhook/{hook['id']}", json={"url": receiver.url("/moved"), "description": "moved"})
    assert reply.status_code == 200, reply.text
    updated = reply.json()
    assert updated["url"] == receiver.url("/moved") and updated["description"] == "moved"
    assert updated["events"] == ["status.completed"] and "secret" not in updated  # untouched, never shown again
    assert updated["created_at"] == hook["created_at"] and updated["updated_at"] >= hook["updated_at"]
    assert fleet.client.get(f"/v1/webhook/{hook['id']}").json() == updated

    got = wait_for(lambda: receiver.at("/moved"), 20, "the pending delivery at the new url")[0]
    assert got.headers["webhook-id"] == first.headers["webhook-id"]  # the same message, moved
    assert verify(hook["secret"], got) and json.loads(got.body)["data"]["workflow_id"] == workflow_id
    log = wait_for(lambda: (d := deliveries(fleet, hook["id"])) and d[0]["state"] == "succeeded" and d, 10, "logged")
    assert log[0]["url"] == receiver.url("/moved") and log[0]["attempts"][0]["status_code"] == 200

    filtered = fleet.client.put(f"/v1/webhook/{hook['id']}", json={"events": ["status.failed", "output"]})
    assert filtered.status_code == 200 and filtered.json()["events"] == ["status.failed", "output"]
    assert filtered.json()["url"] == receiver.url("/moved") and filtered.json()["description"] == "moved"
    for body, reason in (({"events": ["nope"]}, "INVALID_EVENT_FILTER"),
                         ({"url": "http://10.0.0.1/hook"}, "WEBHOOK_TARGET_DENIED"),
                         ({"description": "x" * 501}, "INVALID_FIELD"),
                         ({"secret": "whsec_x"}, None), ({"url": 5}, None)):
        refused = fleet.client.put(f"/v1/webhook/{hook['id']}", json=body)
        assert refused.status_code == 400 and refused.json()["status"] == 400, (body, refused.text)
        assert reason is None or refused.json()["reason"] == reason, (body, refused.text)
    assert fleet.client.get(f"/v1/webhook/{hook['id']}").json()["events"] == ["status.failed", "output"]
    missing = fleet.client.put("/v1/webhook/00000000-0000-4000-8000-000000000000", json={"description": "x"})
    assert missing.status_code == 404 and missing.json()["reason"] == "WEBHOOK_NOT_FOUND"
    assert fleet.client.delete(f"/v1/webhook/{hook['id']}").status_code == 204


def test_delivery_never_blocks_the_workflow(fleet: Fleet, receiver: Receiver) -> None:
    def run_time(prefix: str) -> float:
        started = time.monotonic()
        fleet.wait_status(fleet.submit(prefix), {"completed"}, 60)
        return time.monotonic() - started

    baseline = min(run_time(f"plain-{i}") for i in range(2))
    receiver.delay["/slow"] = 5.0  # past the 2 s attempt timeout: every attempt times out
    slow = register(fleet, receiver.url("/slow"))
    down = register(fleet, f"http://127.0.0.1:{free_port()}/down")  # nothing listens there
    with_hooks = min(run_time(f"hooked-{i}") for i in range(2))
    print(f"\nworkflow run time, best of 2: {baseline:.2f} s plain, {with_hooks:.2f} s with a slow and a dead webhook")
    assert with_hooks < baseline + 1.0, (baseline, with_hooks)
    tries = wait_for(lambda: [d for d in deliveries(fleet, down["id"]) if d["attempts"]], 20, "attempts to a dead port")
    assert tries[0]["attempts"][0]["status_code"] == 0 and "connect" in tries[0]["attempts"][0]["error"]
    timed_out = wait_for(lambda: [d for d in deliveries(fleet, slow["id"]) if d["attempts"]], 20, "a slow attempt")
    assert "timed out" in timed_out[0]["attempts"][0]["error"]
    for hook in (slow, down):
        assert fleet.client.delete(f"/v1/webhook/{hook['id']}").status_code == 204


def test_pending_deliveries_resume_after_a_scheduler_restart(fleet: Fleet, receiver: Receiver) -> None:
    receiver.script["/later"] = [503]
    hook = register(fleet, receiver.url("/later"), ["status.completed"])
    fleet.wait_status(fleet.submit("restart"), {"completed"}, 60)
    wait_for(lambda: len(receiver.at("/later")) >= 2, 20, "failing attempts")
    fleet.suite.kill("scheduler")
    receiver.script["/later"] = [200]
    fleet.suite.start("scheduler")
    fleet.suite.wait_ready("scheduler")
    log = wait_for(lambda: (d := deliveries(fleet, hook["id"])) and d[0]["state"] == "succeeded" and d, 40,
                   "delivered after the restart")
    assert log[0]["attempts"][0]["status_code"] == 200 and len(log) == 1
    assert len({r.headers["webhook-id"] for r in receiver.at("/later")}) == 1
    assert fleet.client.delete(f"/v1/webhook/{hook['id']}").status_code == 204


def test_an_idempotency_key_with_another_webhook_url_is_another_request(fleet: Fleet, receiver: Receiver) -> None:
    from tests.integration.fleet import WORKFLOW, png

    def submit(url: str) -> Any:
        return fleet.client.post(
            "/v1/workflow", headers={"Idempotency-Key": "hook-key-1"},
            data={"name": "keyed", "$prefix": "keyed", "webhook_url": url},
            files={"workflow_json": ("w.json", json.dumps(WORKFLOW), "application/json"),
                   "$photo": ("p.png", png((4, 5, 6)), "image/png")})

    first = submit(receiver.url("/keyed-a"))
    assert first.status_code == 201, first.text
    again = submit(receiver.url("/keyed-a"))
    assert (again.status_code, again.json()) == (201, first.json())  # a replay of the first answer
    other = submit(receiver.url("/keyed-b"))
    assert other.status_code == 409, other.text
    assert other.json()["reason"] == "IDEMPOTENCY_KEY_REUSED"
