"""Event types, endpoint filters and bodies; secrets sealed at rest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from comfyfleet.scheduler.v1 import workflow_pb2

from services.scheduler.errors import InvalidArgument
from services.scheduler.webhooks import events
from services.scheduler.webhooks.sealing import SecretBox, load_key


def status_event(status: int) -> workflow_pb2.WorkflowEvent:
    event = workflow_pb2.WorkflowEvent(workflow_id="w1", seq=4)
    event.time.FromSeconds(1_700_000_000)
    event.status.workflow.CopyFrom(workflow_pb2.Workflow(id="w1", name="demo", status=status, tags=["a"]))  # type: ignore[arg-type]
    return event


@pytest.mark.parametrize(("filters", "event_type", "expected"), [
    (["*"], "progress", True),
    (["status"], "status.completed", True),
    (["status.completed"], "status.completed", True),
    (["status.completed"], "status.failed", False),
    (["output"], "status.completed", False),
    (["output", "status.failed"], "output", True),
])
def test_filters(filters: list[str], event_type: str, expected: bool) -> None:
    assert events.matches(events.parse_filters(filters), event_type) is expected


def test_filter_parsing() -> None:
    assert events.parse_filters([]) == ["*"]
    assert events.parse_filters([" status ", "status", "output"]) == ["status", "output"]
    for bad in (["status.done"], ["outputs"], ["status."], [""]):
        with pytest.raises(InvalidArgument) as caught:
            events.parse_filters(bad)
        assert caught.value.reason == "INVALID_EVENT_FILTER"


def test_types_and_bodies() -> None:
    done = status_event(workflow_pb2.WORKFLOW_STATUS_COMPLETED)
    assert events.event_type(done) == "status.completed"
    body = json.loads(events.body(done))
    assert body["type"] == "status.completed" and body["timestamp"] == "2023-11-14T22:13:20.000Z"
    assert body["data"]["workflow_id"] == "w1" and body["data"]["seq"] == 4
    assert body["data"]["workflow"]["status"] == "completed" and body["data"]["workflow"]["tags"] == ["a"]
    progress = workflow_pb2.WorkflowEvent(workflow_id="w1", seq=5,
                                          progress=workflow_pb2.ProgressEvent(node_id="3", value=2, max=20))
    assert events.event_type(progress) == "progress"
    assert json.loads(events.body(progress))["data"] == {"workflow_id": "w1", "seq": 5, "node_id": "3",
                                                          "node_type": "", "value": 2, "max": 20}


def test_sealed_secrets_open_only_with_the_key_and_row(tmp_path: Path) -> None:
    key = load_key(tmp_path / "webhook-key", create=True)
    assert load_key(tmp_path / "webhook-key", create=False) == key  # made once, then read
    box = SecretBox(key)
    sealed = box.seal("whsec_abc", "row-1")
    assert "whsec_abc" not in sealed and sealed != box.seal("whsec_abc", "row-1")  # fresh nonce
    assert box.open(sealed, "row-1") == "whsec_abc"
    with pytest.raises(ValueError):
        box.open(sealed, "row-2")  # bound to its row
    with pytest.raises(ValueError):
        SecretBox(bytes(32)).open(sealed, "row-1")  # another key
    with pytest.raises(FileNotFoundError):
        load_key(tmp_path / "missing", create=False)
