"""Output lifetime end to end on the s3 backend, with download URLs valid for 2 s and a retention
of 8 s: a completed workflow's output downloads from its URL, the URL is refused (403) once it
expired while the object is still kept, then the object leaves the bucket and the outputs list
empties."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from services.devrun import Suite, free_port
from tests.integration.sse import frames
from tests.integration.test_storage_s3 import BUCKET, png, submit
from tests.storage.seaweed import SeaweedS3

pytestmark = pytest.mark.timeout(120)
RETENTION_SECONDS = 8.0
URL_TTL_SECONDS = 2


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    server = SeaweedS3(tmp_path_factory.mktemp("seaweed-retention"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory, double: str, seaweed: SeaweedS3) -> Iterator[Suite]:
    var: Path = tmp_path_factory.mktemp("var-retention")
    s = Suite(
        var_dir=var, scheduler_port=free_port(), storage_port=free_port(), gateway_port=free_port(),
        comfyui_url=double, runner_tags="gpu",
        extra_env={**seaweed.env(BUCKET), "SCHEDULER_OUTPUT_RETENTION_DAYS": str(RETENTION_SECONDS / 86400),
                   "SCHEDULER_RETENTION_SWEEP_SECONDS": "0.5", "STORAGE_URL_TTL_SECONDS": str(URL_TTL_SECONDS)},
    )
    try:
        s.up()
        yield s
    finally:
        s.down()


def test_outputs_expire_from_the_bucket_and_the_outputs_list(suite: Suite, seaweed: SeaweedS3) -> None:
    with httpx.Client(base_url=suite.gateway_url, headers={"Authorization": f"Bearer {suite.token}"},
                      timeout=30) as client:
        created = submit(client, png(8, 8))
        assert created.status_code == 201, created.text
        workflow_id = created.json()["id"]
        stream = list(frames(client, f"/v1/workflow/{workflow_id}/subscribe", {"Last-Event-ID": "0"}))
        assert stream[-1]["data"]["status"] == "completed"
        done = time.monotonic()

        [output] = client.get(f"/v1/workflow/{workflow_id}/outputs").json()
        assert httpx.get(output["src"], timeout=30).status_code == 200
        time.sleep(URL_TTL_SECONDS + 1.5)
        assert httpx.get(output["src"], timeout=30).status_code == 403  # expired
        assert seaweed.keys(BUCKET, f"outputs/{workflow_id}/") != []  # while the object is kept
        [fresh] = client.get(f"/v1/workflow/{workflow_id}/outputs").json()
        assert httpx.get(fresh["src"], timeout=30).status_code == 200  # a new URL works again

        while seaweed.keys(BUCKET, f"outputs/{workflow_id}/"):
            assert time.monotonic() - done < RETENTION_SECONDS + 10, "the output outlived its retention"
            time.sleep(0.2)
        assert time.monotonic() - done > RETENTION_SECONDS - 2, "deleted before its retention ended"
        deadline = time.monotonic() + 5
        while (listed := client.get(f"/v1/workflow/{workflow_id}/outputs")).json() != []:
            assert time.monotonic() < deadline, listed.text
            time.sleep(0.2)
        assert listed.status_code == 200
