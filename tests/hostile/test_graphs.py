"""workflow_json that is not a usable API-format graph, and JSON bombs: each a 400 naming
workflow_json (or the node), never a 500; the services still answer afterwards.

Documented behaviour: there is no cap on the number of nodes; the 4 MB cap on workflow_json
bounds it, so 100,000 valid nodes are accepted (201); links are checked without recursion."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.api.conftest import Api
from tests.hostile.hostile import expect


def big(n: int, *, chain: int, last: str | None) -> str:
    """`n` nodes (2.6 MB for 100,000, under the 4 MB cap); nodes 1 to `chain`-1 each link to the
    one before (a path deeper than any recursion limit); node 0 links to `last` if given."""
    nodes: dict[str, Any] = {"0": {"class_type": "N", "inputs": {"x": [last, 0]}} if last else {"class_type": "N"}}
    nodes.update({str(i): {"class_type": "N", "inputs": {"x": [str(i - 1), 0]}} for i in range(1, chain)})
    nodes.update({str(i): {"class_type": "N"} for i in range(chain, n)})
    return json.dumps(nodes, separators=(",", ":"))


def node(inputs: dict[str, Any], class_type: Any = "N") -> dict[str, Any]:
    return {"class_type": class_type, "inputs": inputs}


G = json.dumps
# (id, workflow_json, reason, words in the message)
CASES = [
    ("invalid-json", '{"1": {"class_type": ', "INVALID_WORKFLOW", "workflow_json is not valid JSON"),
    ("deep-nesting-arrays", "[" * 100_000 + "]" * 100_000, "INVALID_WORKFLOW", "workflow_json", "nested too deeply"),
    ("deep-nesting-in-an-input", '{"1": {"class_type": "N", "inputs": {"v": ' + '{"a":' * 50_000 + "1"
     + "}" * 50_000 + "}}}", "INVALID_WORKFLOW", "workflow_json", "nested too deeply"),
    ("huge-integer", '{"1": {"class_type": "N", "inputs": {"v": ' + "9" * 100_000 + "}}}", "INVALID_WORKFLOW",
     "workflow_json", "too many digits"),
    ("huge-float", '{"1": {"class_type": "N", "inputs": {"v": 1e999999}}}', "INVALID_WORKFLOW", "workflow_json",
     "out of range"),
    ("nan", '{"1": {"class_type": "N", "inputs": {"v": NaN}}}', "INVALID_WORKFLOW", "NaN is not a JSON number"),
    ("infinity", '{"1": {"class_type": "N", "inputs": {"v": -Infinity}}}', "INVALID_WORKFLOW",
     "-Infinity is not a JSON number"),
    ("truncated-after-a-node", '{"1": {"class_type": "N", "inputs": {"v": "x"}}, "2": ', "INVALID_WORKFLOW",
     "not valid JSON"),
    ("top-level-array", "[1, 2]", "INVALID_WORKFLOW", "must be a non-empty object"),
    ("empty-object", "{}", "INVALID_WORKFLOW", "must be a non-empty object"),
    ("ui-format", G({"nodes": [], "links": []}), "UI_FORMAT_WORKFLOW", "UI-format", "API format"),
    ("node-is-a-number", G({"1": 5}), "INVALID_WORKFLOW", "node '1'", "class_type"),
    ("node-is-a-string", G({"1": "KSampler"}), "INVALID_WORKFLOW", "node '1'", "class_type"),
    ("node-is-a-list", G({"1": [node({})]}), "INVALID_WORKFLOW", "node '1'", "class_type"),
    ("node-is-null", G({"1": None}), "INVALID_WORKFLOW", "node '1'", "class_type"),
    ("class-type-empty", G({"1": node({}, "")}), "INVALID_WORKFLOW", "node '1'", "class_type"),
    ("class-type-object", G({"1": node({}, {"$ne": 1})}), "INVALID_WORKFLOW", "node '1'", "class_type"),
    ("inputs-a-list", G({"1": {"class_type": "N", "inputs": [1]}}), "INVALID_WORKFLOW", "node '1'",
     "not an object"),
    ("self-link", G({"1": node({"x": ["1", 0]})}), "GRAPH_CYCLE", "cycle", "node '1'"),
    ("two-node-cycle", G({"1": node({"x": ["2", 0]}), "2": node({"x": ["1", 0]})}), "GRAPH_CYCLE", "cycle"),
    ("cycle-behind-a-good-node", G({"1": node({"x": ["2", 0]}), "2": node({"x": ["3", 0]}),
                                    "3": node({"x": ["4", 0]}), "4": node({"x": ["2", 1]})}), "GRAPH_CYCLE", "cycle"),
    ("link-to-missing-node", G({"1": node({"x": ["9", 0]})}), "INVALID_LINK", "node '1'", "'x'",
     "links to node '9'", "not in the graph"),
    ("link-to-missing-node-id-like-index", G({"1": node({}), "2": node({"x": ["01", 0]})}), "INVALID_LINK",
     "links to node '01'"),
    ("100k-nodes-50k-long-cycle", big(100_000, chain=50_000, last="49999"), "GRAPH_CYCLE", "cycle"),
    ("100k-nodes-one-links-nowhere", big(100_000, chain=50_000, last="gone"), "INVALID_LINK",
     "links to node 'gone'"),
]


@pytest.mark.parametrize(("workflow_json", "reason", "words"),
                         [pytest.param(g, r, w, id=i) for i, g, r, *w in CASES])
async def test_bad_graph(api: Api, workflow_json: str, reason: str, words: list[str]) -> None:
    auth = await api.user("graphs")
    reply = await api.client.post("/v1/workflow", headers=auth, data={"name": "g"},
                                  files={"workflow_json": ("wf.json", workflow_json.encode(), "application/json")})
    error = await expect(api, reply, auth, 400, reason, *words)
    assert error["details"][0]["field"] == "workflow_json"


async def test_100k_nodes_with_a_50k_long_path_are_accepted(api: Api) -> None:
    auth = await api.user("graphs-big")
    reply = await api.client.post("/v1/workflow", headers=auth, data={"name": "g"},
                                  files={"workflow_json": ("wf.json", big(100_000, chain=50_000, last=None).encode())})
    assert reply.status_code == 201, reply.text[:300]
    assert (await api.client.get("/v1/user", headers=auth)).status_code == 200


async def test_workflow_json_over_its_4mb_cap_is_refused_before_parsing(api: Api) -> None:
    """A huge string inside the graph: 413 while streaming, never parsed."""
    auth = await api.user("graphs-huge-string")
    huge = b'{"1": {"class_type": "N", "inputs": {"v": "' + b"a" * (4 * 1024 * 1024) + b'"}}}'
    reply = await api.client.post("/v1/workflow", headers=auth, data={"name": "g"},
                                  files={"workflow_json": ("wf.json", huge)})
    await expect(api, reply, auth, 413, "FIELD_TOO_LARGE", "'workflow_json'", "4 MB")
