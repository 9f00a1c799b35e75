"""Tag-matched placement across three runner agents, each with its own ComfyUI double.

    sdxl-box   tags gpu,sdxl   2 slots
    flux-box   tags gpu,flux   1 slot
    cpu-box    tags cpu        1 slot

Each workflow must run on a runner whose tags include its tags (seen in the double whose
history holds its prompt, and in its runner_id), and no ComfyUI ever holds more prompts at
once than its runner's slots (the doubles' /queue, sampled while the work runs).
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.fleet import TERMINAL, WORKFLOW, Fleet, fleet_suite, png, start_double

pytestmark = pytest.mark.timeout(90)

RUNNERS = {"sdxl-box": ("gpu,sdxl", 2), "flux-box": ("gpu,flux", 1), "cpu-box": ("cpu", 1)}
ALLOWED = {  # workflow tags -> the runners whose tags include them
    "sdxl": {"sdxl-box"},
    "flux": {"flux-box"},
    "gpu": {"sdxl-box", "flux-box"},
    "gpu,sdxl": {"sdxl-box"},
    "cpu": {"cpu-box"},
    "": {"sdxl-box", "flux-box", "cpu-box"},
}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    base: Path = tmp_path_factory.mktemp("scheduling")
    with fleet_suite(base / "var", SCHEDULER_LEASE_SECONDS="5", SCHEDULER_HEARTBEAT_SECONDS="1") as f:
        for name, (tags, slots) in RUNNERS.items():
            f.add_runner(name, start_double(base / name, node_delay_ms=150), tags, slots)
        yield f


def test_each_workflow_runs_only_where_its_tags_match_and_no_runner_exceeds_its_slots(fleet: Fleet) -> None:
    most = dict.fromkeys(RUNNERS, 0)
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            for name in RUNNERS:
                most[name] = max(most[name], fleet.doubles[name].queue_size())
            sampling.wait(0.03)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        submitted: dict[str, str] = {}  # workflow id -> its tags
        for round_ in range(3):
            for i, tags in enumerate(ALLOWED):
                prefix = f"r{round_}-t{i}"
                submitted[fleet.submit(prefix, tags, color=(round_ * 40, i * 30, 90))] = tags
        done = {wid: fleet.wait_status(wid, TERMINAL, 60) for wid in submitted}
    finally:
        sampling.set()
        sampler.join()

    assert {wf["status"] for wf in done.values()} == {"completed"}
    ran_on = {name: fleet.doubles[name].prefixes() for name in RUNNERS}
    ids = {name: fleet.runner_id(name) for name in RUNNERS}
    for wid, tags in submitted.items():
        wf = done[wid]
        where = [name for name in RUNNERS if ran_on[name][wf["name"]]]
        assert len(where) == 1 and ran_on[where[0]][wf["name"]] == 1, (wf["name"], tags, ran_on)
        assert where[0] in ALLOWED[tags], f"{wf['name']} with tags {tags!r} ran on {where[0]}"
        assert wf["runner_id"] == ids[where[0]]
        assert wf["attempt"] == 1
    # 6 sdxl-only or gpu-only-and-sdxl workflows alone have just sdxl-box: it was kept busy
    # up to its 2 slots, and no runner ever held more prompts than it has slots.
    assert most == {"sdxl-box": 2, "flux-box": 1, "cpu-box": 1}, most


def test_a_workflow_no_runner_could_ever_take_is_refused(fleet: Fleet) -> None:
    # API.md: 400 when no enabled runner's tags could ever match; the message names the tags.
    reply = fleet.client.post(
        "/v1/workflow", data={"name": "nowhere", "$prefix": "nowhere", "tags": "tpu"},
        files={"workflow_json": ("w.json", json.dumps(WORKFLOW), "application/json"),
               "$photo": ("p.png", png((1, 2, 3)), "image/png")})
    assert reply.status_code == 400 and "tpu" in reply.json()["message"], reply.text


def test_work_waits_for_its_offline_runner_and_runs_when_it_connects(fleet: Fleet) -> None:
    fleet.suite.kill("runner-flux-box", signal.SIGTERM)  # drains (nothing held) and exits
    wid = fleet.submit("while-flux-was-away", "flux")
    time.sleep(1.5)
    assert fleet.get(wid)["status"] == "accepted" and fleet.get(wid)["runner_id"] is None
    fleet.restart_runner("flux-box", *RUNNERS["flux-box"])
    wf = fleet.wait_status(wid, TERMINAL, 30)
    assert wf["status"] == "completed" and wf["runner_id"] == fleet.runner_id("flux-box")
    assert fleet.doubles["flux-box"].prefixes()["while-flux-was-away"] == 1
