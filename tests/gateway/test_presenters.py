"""Proto -> API.md JSON."""

from __future__ import annotations

import json

from comfyfleet.scheduler.v1 import user_pb2, workflow_pb2
from comfyfleet.storage.v1 import object_pb2
from google.protobuf import timestamp_pb2

from services.gateway import presenters
from tests.gateway.fakes import USER_ID, make_workflow, ts

WF_ID = "0b6f4a52-8a4c-4a8e-9d5e-1f7f3f1c2d3e"


def output(key: str = f"outputs/{WF_ID}/9/img_00001.png") -> workflow_pb2.Output:
    return workflow_pb2.Output(
        id="out-1", node_id="9", filename="img_00001.png",
        object=object_pb2.ObjectRef(key=key, size_bytes=1234, content_type="image/png", sha256="ab"),
    )


def test_a_fresh_workflow_summary() -> None:
    wf = make_workflow(WF_ID, name="cats", tags=["gpu", "fast"])
    assert presenters.workflow_summary(wf) == {
        "id": WF_ID, "name": "cats", "status": "accepted", "tags": ["gpu", "fast"],
        "created_at": "2023-11-14T22:13:20Z", "updated_at": "2023-11-14T22:13:21Z",
        "started_at": None, "completed_at": None,
    }


def test_times_keep_fractions_and_end_in_z() -> None:
    assert presenters.rfc3339(timestamp_pb2.Timestamp(seconds=0, nanos=500_000_000)) == "1970-01-01T00:00:00.500Z"
    assert presenters.rfc3339(None) is None


def test_the_full_record_of_a_failed_workflow() -> None:
    graph = {"1": {"class_type": "KSampler", "inputs": {"seed": "$random()"}}}
    wf = make_workflow(
        WF_ID, status=workflow_pb2.WORKFLOW_STATUS_FAILED, runner_id="r-1", workflow_json=json.dumps(graph),
        params=[workflow_pb2.WorkflowParam(placeholder="$random()", value="42")], prompt_id="p-1",
        failure=workflow_pb2.Failure(node_id="1", node_type="KSampler", exception_type="RuntimeError",
                                     exception_message="CUDA out of memory", traceback=["line 1"]),
        started_at=ts(1_700_000_010), completed_at=ts(1_700_000_020), attempt=2,
        priority=workflow_pb2.PRIORITY_HIGH, outputs=[output()],
    )
    record = presenters.workflow_record(wf)
    assert record["status"] == "failed" and record["user_id"] == USER_ID and record["runner_id"] == "r-1"
    assert record["workflow_json"] == graph
    assert record["workflow_params"] == [["$random()", "42"]]
    assert record["prompt_id"] == "p-1" and record["queue_number"] is None
    assert (record["error_node"], record["exception_type"], record["exception_message"]) == (
        "1", "RuntimeError", "CUDA out of memory")
    assert record["traceback"] == ["line 1"]
    assert record["attempt"] == 2 and record["priority"] == "high" and record["output_count"] == 1
    assert record["started_at"] == "2023-11-14T22:13:30Z" and record["completed_at"] == "2023-11-14T22:13:40Z"


def test_unset_fields_of_the_record_are_null() -> None:
    record = presenters.workflow_record(make_workflow(WF_ID, priority=workflow_pb2.PRIORITY_UNSPECIFIED))
    for key in ("runner_id", "workflow_json", "prompt_id", "queue_number", "error_node", "exception_type",
                "exception_message", "started_at", "completed_at"):
        assert record[key] is None, key
    assert record["priority"] == "normal" and record["node_errors"] == [] and record["workflow_params"] == []


def test_queue_number_zero_is_kept() -> None:
    wf = make_workflow(WF_ID, status=workflow_pb2.WORKFLOW_STATUS_QUEUED, queue_number=0)
    assert presenters.workflow_record(wf)["queue_number"] == 0
    assert presenters.snapshot(wf, {})["queue_number"] == 0


def test_invalid_workflows_list_their_node_errors() -> None:
    wf = make_workflow(WF_ID, status=workflow_pb2.WORKFLOW_STATUS_INVALID, node_errors=[
        workflow_pb2.NodeError(node_id="3", class_type="KSampler", type="value_not_in_list",
                               message="Value not in list", details="sampler_name: 'x'", input_name="sampler_name"),
    ])
    record = presenters.workflow_record(wf)
    assert record["status"] == "invalid"
    assert record["node_errors"] == [{
        "node_id": "3", "class_type": "KSampler", "type": "value_not_in_list", "message": "Value not in list",
        "details": "sampler_name: 'x'", "input_name": "sampler_name",
    }]


def test_the_snapshot_has_comfycontrol_shape() -> None:
    running = make_workflow(WF_ID, status=workflow_pb2.WORKFLOW_STATUS_RUNNING, prompt_id="p-1",
                            started_at=ts(1_700_000_010))
    assert presenters.snapshot(running, {}) == {
        "id": WF_ID, "status": "running", "prompt": {"prompt_id": "p-1"}, "queue_number": None,
        "outputs": [], "cause": None, "started_at": "2023-11-14T22:13:30Z", "completed_at": None,
    }
    done = make_workflow(WF_ID, status=workflow_pb2.WORKFLOW_STATUS_COMPLETED, outputs=[output()])
    key = output().object.key
    assert presenters.snapshot(done, {key: "https://signed"})["outputs"] == [{
        "id": "out-1", "workflow_id": WF_ID, "src": "https://signed", "filename": "img_00001.png",
        "content_type": "image/png", "size": 1234, "node_id": "9",
    }]
    failed = make_workflow(WF_ID, status=workflow_pb2.WORKFLOW_STATUS_FAILED, failure=workflow_pb2.Failure(
        node_id="1", node_type="KSampler", exception_type="RuntimeError", exception_message="boom"))
    assert presenters.snapshot(failed, {})["cause"] == {
        "node_type": "KSampler", "exception_type": "RuntimeError", "exception_message": "boom"}


def event(seq: int, **kind: object) -> workflow_pb2.WorkflowEvent:
    return workflow_pb2.WorkflowEvent(workflow_id=WF_ID, seq=seq, **kind)  # type: ignore[arg-type]


def test_each_event_kind_has_its_frame() -> None:
    assert presenters.event_frame(event(2, executing=workflow_pb2.ExecutingEvent(node_id="3", node_type="KSampler")),
                                  {}) == ("executing", {"node_id": "3", "node_type": "KSampler"})
    assert presenters.event_frame(
        event(3, progress=workflow_pb2.ProgressEvent(node_id="3", node_type="KSampler", value=4, max=20)), {}
    ) == ("progress", {"node_id": "3", "node_type": "KSampler", "value": 4, "max": 20})
    assert presenters.event_frame(event(4, log=workflow_pb2.LogEvent(level=workflow_pb2.LOG_LEVEL_WARNING,
                                                                      message="slow")), {}) == (
        "log", {"level": "warning", "message": "slow"})
    name, data = presenters.event_frame(event(5, output=workflow_pb2.OutputEvent(output=output())),
                                        {output().object.key: "u"}) or ("", {})
    assert name == "output" and data["src"] == "u" and data["workflow_id"] == WF_ID
    status = event(6, status=workflow_pb2.StatusEvent(workflow=workflow_pb2.Workflow(
        status=workflow_pb2.WORKFLOW_STATUS_QUEUED, queue_number=2)))
    name, data = presenters.event_frame(status, {}) or ("", {})
    assert name == "status" and data["status"] == "queued" and data["queue_number"] == 2
    assert data["id"] == WF_ID  # from the event when the record lacks it
    assert presenters.event_frame(event(7), {}) is None  # an unknown kind is skipped


def test_object_keys_to_presign() -> None:
    done = make_workflow(WF_ID, outputs=[output("a"), output("b")])
    assert presenters.object_keys(done) == ["a", "b"]
    assert presenters.object_keys(event(1, status=workflow_pb2.StatusEvent(workflow=done))) == ["a", "b"]
    assert presenters.object_keys(event(2, output=workflow_pb2.OutputEvent(output=output("c")))) == ["c"]
    assert presenters.object_keys(event(3, log=workflow_pb2.LogEvent(message="x"))) == []


def test_user() -> None:
    u = user_pb2.User(id="u", name="Ada", email="a@x", tier="pro", created_at=ts(0))
    assert presenters.user(u) == {"id": "u", "name": "Ada", "email": "a@x", "tier": "pro",
                                  "created_at": "1970-01-01T00:00:00Z", "updated_at": None}
