"""Table tests of the prompt graph core: $file substitution, node errors, queue position."""

from __future__ import annotations

from typing import Any

import pytest

from services.runner.errors import InvalidAssignment
from services.runner.prompt_graph import (
    NodeErrorInfo,
    QueueSnapshot,
    file_params,
    node_errors,
    parse_prompt,
    parse_queue,
    queue_position,
    substitute_files,
    validation_message,
)
from tests.runner import transcripts

PROMPT = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "$file(photo)"}},
    "2": {"class_type": "LoadImage", "inputs": {"image": "$file(mask)", "upload": "image"}},
    "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "a $file(photo) in text", "clip": ["9", 1]}},
    "4": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "$file(photo) "}},
}


def test_only_exact_placeholders_are_replaced() -> None:
    names = {"photo": "wf-1/cat.png", "mask": "wf-1/cat (1).png"}
    result = substitute_files(PROMPT, names)
    assert result["1"]["inputs"]["image"] == "wf-1/cat.png"
    assert result["2"]["inputs"] == {"image": "wf-1/cat (1).png", "upload": "image"}
    assert result["3"]["inputs"] == PROMPT["3"]["inputs"]  # inside text: untouched
    assert result["4"]["inputs"]["filename_prefix"] == "$file(photo) "  # not exact: untouched
    assert result["1"]["class_type"] == "LoadImage"
    assert PROMPT["1"]["inputs"]["image"] == "$file(photo)"  # the input is not mutated


def test_placeholders_without_a_file_stay() -> None:
    assert substitute_files(PROMPT, {})["1"]["inputs"]["image"] == "$file(photo)"
    assert file_params(PROMPT) == {"photo", "mask"}


@pytest.mark.parametrize("raw", ["[1, 2]", "not json", '"text"'])
def test_prompt_must_be_a_json_object(raw: str) -> None:
    with pytest.raises(InvalidAssignment):
        parse_prompt(raw)


def _recorded_400(error_type: str) -> dict[str, Any]:
    for body in transcripts.prompt_responses("04_validation_errors.jsonl", 400):
        errors = [e["type"] for n in body["node_errors"].values() for e in n["errors"]]
        if error_type in errors or body["error"]["type"] == error_type:
            return body
    raise KeyError(error_type)


def test_every_error_of_every_node_is_kept() -> None:
    body = _recorded_400("value_not_in_list")
    assert node_errors(body["node_errors"]) == [
        NodeErrorInfo(
            node_id="2",
            class_type="ImageScale",
            type="value_not_in_list",
            message="Value not in list",
            details=(
                "upscale_method: 'super-resolution' not in ['nearest-exact', 'bilinear', 'area', 'bicubic', 'lanczos']"
            ),
            input_name="upscale_method",
        )
    ]
    two = [b for b in transcripts.prompt_responses("04_validation_errors.jsonl", 400) if len(b["node_errors"]) == 2]
    errors = node_errors(two[0]["node_errors"])
    assert [(e.node_id, e.type, e.input_name) for e in errors] == [
        ("1", "value_smaller_than_min", "width"),
        ("2", "value_smaller_than_min", "width"),
        ("2", "value_not_in_list", "upscale_method"),
    ]


@pytest.mark.parametrize(
    ("error_type", "message"),
    [
        ("value_smaller_than_min", "Prompt outputs failed validation"),
        ("invalid_prompt", "Cannot execute because node NoSuchNode does not exist.: Node ID '#1'"),
        ("prompt_no_outputs", "Prompt has no outputs"),
    ],
)
def test_top_level_message_of_recorded_400s(error_type: str, message: str) -> None:
    assert validation_message(_recorded_400(error_type)) == message


def test_recorded_200_with_node_errors_is_read_as_warnings() -> None:
    (body,) = [b for b in transcripts.prompt_responses("04_validation_errors.jsonl", 200) if b["node_errors"]]
    assert [(e.node_id, e.class_type, e.type) for e in node_errors(body["node_errors"])] == [
        ("3", "EmptyImage", "value_smaller_than_min")
    ]


def _recorded_busy_queue() -> dict[str, Any]:
    for line in transcripts.lines("06_interrupt_and_queue.jsonl"):
        if line["dir"] == "http_resp" and line["path"] == "/queue" and line["body"]["queue_pending"]:
            return line["body"]
    raise KeyError("busy queue")


def test_queue_position_sorts_the_heap_by_number() -> None:
    queue = parse_queue(_recorded_busy_queue())
    assert [n for n, _ in queue.pending] == [-26, 23, 25, 24]  # heap order, as recorded
    running = queue.running[0]
    assert queue_position(queue, running) == 0
    by_number = {n: pid for n, pid in queue.pending}
    assert queue_position(queue, by_number[-26]) == 0  # front=true: next to run
    assert queue_position(queue, by_number[23]) == 1
    assert queue_position(queue, by_number[24]) == 2
    assert queue_position(queue, by_number[25]) == 3
    assert queue_position(queue, "unknown") is None


def test_empty_queue() -> None:
    queue = parse_queue({"queue_running": [], "queue_pending": []})
    assert queue == QueueSnapshot((), ())
    assert not queue.holds("x")

