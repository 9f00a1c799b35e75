"""parse_graph (is workflow_json an API-format graph?) and normalise_tags."""

from __future__ import annotations

import json

import pytest

from services.scheduler.core.graph import MAX_TAGS, normalise_tags, parse_graph
from services.scheduler.errors import InvalidArgument, InvalidWorkflow

API_GRAPH = {
    "3": {"class_type": "KSampler", "inputs": {"seed": 5, "model": ["4", 0]}},
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15.safetensors"}},
    "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0]}, "_meta": {"title": "Save"}},
}


def test_an_api_format_graph_is_returned_as_parsed() -> None:
    assert parse_graph(json.dumps(API_GRAPH)) == API_GRAPH


def test_a_node_without_inputs_is_allowed() -> None:
    assert parse_graph('{"1": {"class_type": "Note"}}') == {"1": {"class_type": "Note"}}


BAD: list[tuple[str, str, str, str, dict[str, str]]] = [
    # (case, workflow_json, reason, words in the message, details)
    ("broken JSON", '{"3": {"class_type": "KSampler",', "INVALID_WORKFLOW", "is not valid JSON",
     {"field": "workflow_json"}),
    ("not JSON at all", "hello", "INVALID_WORKFLOW", "line 1 column 1", {"field": "workflow_json"}),
    ("a list", "[1, 2]", "INVALID_WORKFLOW", "must be a non-empty object", {"field": "workflow_json"}),
    ("a string", '"3"', "INVALID_WORKFLOW", "must be a non-empty object", {"field": "workflow_json"}),
    ("null", "null", "INVALID_WORKFLOW", "must be a non-empty object", {"field": "workflow_json"}),
    ("empty object", "{}", "INVALID_WORKFLOW", "must be a non-empty object", {"field": "workflow_json"}),
    ("UI-format export", json.dumps({"last_node_id": 9, "nodes": [{"id": 3, "type": "KSampler"}], "links": [],
                                      "version": 0.4}),
     "UI_FORMAT_WORKFLOW", "Export (API)", {"field": "workflow_json"}),
    ("node without class_type", json.dumps({"3": {"inputs": {}}}), "INVALID_WORKFLOW",
     "node '3' of workflow_json has no class_type", {"field": "workflow_json", "node_id": "3"}),
    ("node with an empty class_type", json.dumps({"3": {"class_type": "", "inputs": {}}}), "INVALID_WORKFLOW",
     "has no class_type", {"field": "workflow_json", "node_id": "3"}),
    ("node with a class_type that is not a string", json.dumps({"3": {"class_type": 7}}), "INVALID_WORKFLOW",
     "has no class_type", {"field": "workflow_json", "node_id": "3"}),
    ("a node that is not an object", json.dumps({**API_GRAPH, "10": "KSampler"}), "INVALID_WORKFLOW",
     "node '10' of workflow_json has no class_type", {"field": "workflow_json", "node_id": "10"}),
    ("inputs that are not an object", json.dumps({"3": {"class_type": "KSampler", "inputs": [1]}}),
     "INVALID_WORKFLOW", "inputs that are not an object", {"field": "workflow_json", "node_id": "3"}),
]


@pytest.mark.parametrize(("text", "reason", "words", "details"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_parse_graph_rejects(text: str, reason: str, words: str, details: dict[str, str]) -> None:
    with pytest.raises(InvalidWorkflow) as caught:
        parse_graph(text)
    assert isinstance(caught.value, InvalidArgument)  # -> 400
    assert caught.value.reason == reason
    assert words in caught.value.message
    assert caught.value.details == [details]


TAGS_OK: list[tuple[str, list[str], list[str]]] = [
    ("none", [], []),
    ("kept in order", ["gpu", "sdxl"], ["gpu", "sdxl"]),
    ("spaces around are stripped", [" gpu ", "\tsdxl"], ["gpu", "sdxl"]),
    ("empties dropped", ["", "gpu", "  "], ["gpu"]),
    ("duplicates dropped, first wins", ["gpu", "sdxl", "gpu", " sdxl"], ["gpu", "sdxl"]),
    ("case-sensitive: GPU and gpu are two tags", ["GPU", "gpu"], ["GPU", "gpu"]),
    ("every allowed character", ["A-z_0.9"], ["A-z_0.9"]),
    ("64 characters", ["t" * 64], ["t" * 64]),
    ("ten tags", [f"t{i}" for i in range(MAX_TAGS)], [f"t{i}" for i in range(MAX_TAGS)]),
    ("eleven given, ten after removing a duplicate", [*(f"t{i}" for i in range(MAX_TAGS)), "t0"],
     [f"t{i}" for i in range(MAX_TAGS)]),
]


@pytest.mark.parametrize(("given", "expected"), [c[1:] for c in TAGS_OK], ids=[c[0] for c in TAGS_OK])
def test_normalise_tags(given: list[str], expected: list[str]) -> None:
    assert normalise_tags(given) == expected


TAGS_BAD: list[tuple[str, list[str], str, dict[str, object]]] = [
    # (case, tags, words, details)
    ("65 characters", ["t" * 65], "is not 1 to 64", {"field": "tags", "tag": "t" * 65}),
    ("a space inside", ["gpu a100"], "'gpu a100' is not 1 to 64", {"field": "tags", "tag": "gpu a100"}),
    ("a comma inside (the gateway splits them)", ["gpu,sdxl"], "is not", {"field": "tags", "tag": "gpu,sdxl"}),
    ("a slash", ["gpu/a100"], "is not", {"field": "tags", "tag": "gpu/a100"}),
    ("non-ASCII", ["gpü"], "is not", {"field": "tags", "tag": "gpü"}),
    ("eleven tags", [f"t{i}" for i in range(MAX_TAGS + 1)], "at most 10 tags are allowed, got 11", {"field": "tags"}),
]


@pytest.mark.parametrize(("given", "words", "details"), [c[1:] for c in TAGS_BAD], ids=[c[0] for c in TAGS_BAD])
def test_normalise_tags_rejects(given: list[str], words: str, details: dict[str, object]) -> None:
    with pytest.raises(InvalidArgument) as caught:
        normalise_tags(given)
    assert caught.value.reason == "INVALID_TAG"
    assert words in caught.value.message
    assert caught.value.details == [details]
