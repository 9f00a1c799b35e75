"""Storage faults (issue 11).

- Storage killed for 4 s under a steady stream of submissions: creates get 503 with
  Retry-After and the API's error body; nothing half-written remains (every input object on
  disk belongs to a workflow that exists, no temp file is left); after it returns, new
  workflows complete and their outputs download; every acknowledged workflow completes, also
  those running when storage died (their runner waits for storage to store the outputs).
- The local backend's disk full (a 2 MiB tmpfs under the objects directory): uploads fail with
  503 STORAGE_FULL and Retry-After; every workflow acknowledged before has all its input bytes;
  no partial object or temp file remains; once space is freed, uploads work again.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.faults.audit import wait_all_terminal
from tests.faults.stream import SubmissionStream
from tests.integration.fleet import TERMINAL, Fleet, fleet_suite, png, start_double, wait_for

GATEWAY_RECOVERY = 2.0
OUTAGE = 4.0  # longer than the runner's three quick retries (1.5 s): it has to wait for storage


def assert_unavailable(status: int, headers: dict[str, str], body: object, reason: str | None = None) -> None:
    assert status == 503, (status, body)
    assert int(headers["retry-after"]) > 0
    assert isinstance(body, dict) and body["status"] == 503 and body["message"] and body["reason"], body
    if reason is not None:
        assert body["reason"] == reason, body


def running(fleet: Fleet) -> list[str]:
    listed = fleet.client.get("/v1/workflow", params={"status": "running", "per_page": 100}).json()
    return [w["id"] for w in listed["workflows"]]


def orphan_inputs(fleet: Fleet) -> dict[str, int]:
    """inputs/{id}/ directories on disk whose workflow does not exist (GET answers 404)."""
    inputs = fleet.suite.var_dir / "objects" / "data" / "inputs"
    found = [p.name for p in inputs.iterdir()] if inputs.exists() else []
    return {wid: status for wid in found if (status := fleet.client.get(f"/v1/workflow/{wid}").status_code) != 200}


def temp_files(fleet: Fleet) -> list[str]:
    tmp = fleet.suite.var_dir / "objects" / "tmp"
    return [p.name for p in tmp.iterdir()] if tmp.exists() else []


@pytest.mark.timeout(120)
def test_storage_down_for_a_while_refuses_creates_cleanly_and_works_again(tmp_path: Path) -> None:
    with fleet_suite(tmp_path / "var") as fleet:
        fleet.add_runner("one", start_double(tmp_path / "one", 100), "gpu", slots=2)
        with SubmissionStream(fleet.suite.gateway_url, fleet.suite.token, interval=0.3, label="o") as stream:
            wait_for(lambda: len(stream.accepted) >= 5 and running(fleet), 30, "work running before the outage")
            fleet.suite.kill("storage", signal.SIGKILL)
            down_at = time.monotonic()
            in_flight = running(fleet)
            before = len(stream.refused)
            wait_for(lambda: len(stream.refused) >= before + 5, 20, "creates refused during the outage")
            time.sleep(max(0.0, OUTAGE - (time.monotonic() - down_at)))
            fleet.suite.start("storage")
            fleet.suite.wait_ready("storage", 30)
            back_at = time.monotonic()
            wait_for(lambda: fleet.client.get("/readyz").status_code == 200, GATEWAY_RECOVERY,
                     "the gateway to reach storage again")
            refused_during = len(stream.refused)
            accepted_at_return = set(stream.accepted)
            wait_for(lambda: len(stream.accepted) >= len(accepted_at_return) + 5, 30, "creates accepted again")
            stream.stop()

        for refusal in stream.refused:
            assert_unavailable(refusal.status, refusal.headers, refusal.body)
        assert len(stream.refused) == refused_during, "a create was refused after storage came back"

        ids = list(stream.accepted)
        done = wait_all_terminal(fleet, ids, 60)
        after = [w for w in ids if w not in accepted_at_return]
        assert {done[w]["status"] for w in after} == {"completed"}, {w: done[w] for w in after}
        for wid in after[:3]:  # their outputs download (storage serves again)
            [out] = fleet.client.get(f"/v1/workflow/{wid}/outputs").json()
            assert httpx.get(out["src"], timeout=10).content[:8] == b"\x89PNG\r\n\x1a\n"

        assert in_flight and {done[w]["status"] for w in in_flight} == {"completed"}
        # Work that finished while storage was down waited for it to store its outputs: none lost.
        failed = {w["id"]: f"{w['exception_type']}: {w['exception_message']}" for w in done.values()
                  if w["status"] != "completed"}
        assert failed == {}, failed
        assert orphan_inputs(fleet) == {}, "input objects without a workflow"
        assert temp_files(fleet) == []
        statuses = Counter(w["status"] for w in done.values())
        sys.stderr.write(f"\nstorage down {back_at - down_at:.1f}s with {len(in_flight)} running: "
                         f"{len(stream.refused)} creates refused with 503, {len(ids)} acknowledged, {dict(statuses)}\n")


@contextlib.contextmanager
def tiny_disk(path: Path, size: str = "2m") -> Iterator[None]:
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a {size} tmpfs for the disk-full test (needs root): {mounted.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def create(fleet: Fleet, name: str, payload: bytes) -> httpx.Response:
    graph = {"1": {"class_type": "LoadImage", "inputs": {"image": "$file(photo)"}},
             "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": name}}}
    return fleet.client.post("/v1/workflow", data={"name": name}, files={
        "workflow_json": ("workflow.json", json.dumps(graph), "application/json"),
        "$photo": ("photo.png", payload, "image/png")})


@pytest.mark.timeout(90)
def test_a_full_disk_refuses_uploads_clearly_and_keeps_the_database_consistent(tmp_path: Path) -> None:
    var = tmp_path / "var"
    with tiny_disk(var / "objects"), fleet_suite(var) as fleet:  # no runner: the workflows wait, their inputs stay
        accepted: dict[str, bytes] = {}
        refused: list[httpx.Response] = []
        for i in range(12):  # 12 x 400 KB into 2 MiB
            payload = png((i, 0, 0)) + os.urandom(400 * 1024)
            reply = create(fleet, f"fill-{i}", payload)
            if reply.status_code == 201:
                accepted[reply.json()["id"]] = payload
            else:
                refused.append(reply)
        assert 1 <= len(accepted) <= 6 and len(refused) >= 6, (len(accepted), [r.status_code for r in refused])
        for reply in refused:
            assert_unavailable(reply.status_code, dict(reply.headers), reply.json(), "STORAGE_FULL")
            assert "full" in reply.json()["message"], reply.json()

        # Consistent: each acknowledged workflow has its whole input, nothing else is on disk.
        inputs = var / "objects" / "data" / "inputs"
        assert sorted(p.name for p in inputs.iterdir()) == sorted(accepted)
        for wid, payload in accepted.items():
            [stored] = [p for p in (inputs / wid).rglob("*") if p.is_file() and not p.name.endswith(".meta.json")]
            assert stored.read_bytes() == payload, wid
            assert fleet.get(wid)["status"] == "accepted"
        assert orphan_inputs(fleet) == {}
        assert temp_files(fleet) == []
        assert fleet.client.get("/readyz").status_code == 200  # the services still answer

        # Space freed (cancel, delete): uploads work again.
        for wid in accepted:
            assert fleet.client.post(f"/v1/workflow/{wid}/cancel").status_code == 200
            wait_for(lambda w=wid: fleet.get(w)["status"] in TERMINAL, 10, "cancelled")
            assert fleet.client.delete(f"/v1/workflow/{wid}").status_code == 204
        reply = create(fleet, "after", png((1, 2, 3)) + os.urandom(400 * 1024))
        assert reply.status_code == 201, reply.text
        sys.stderr.write(f"\ndisk full: {len(accepted)} uploads fit in 2 MiB, {len(refused)} refused with 503 "
                         f"STORAGE_FULL; after freeing space a 400 KB upload is accepted\n")
