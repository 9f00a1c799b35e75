"""Placeholder abuse inside workflow_json, and form fields that do not fit the placeholders:
each a 400 naming the placeholder or the field; the services still answer afterwards."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.api.conftest import Api
from tests.hostile.hostile import expect


def graph(value: str) -> dict[str, Any]:
    return {"1": {"class_type": "SaveImage", "inputs": {"filename_prefix": value}}}


# (id, placeholder in the graph, extra form fields, reason, words in the message)
CASES: list[tuple[str, str, dict[str, Any], str, list[str]]] = [
    ("nested-text", "$text($text(a))", {}, "INVALID_PLACEHOLDER", ["$text($text(a))", "not a valid placeholder"]),
    ("unclosed-parenthesis-choice", "$choice(c, a, b", {"#c": "a"}, "UNKNOWN_FIELD",
     ["#c", "matches no placeholder"]),
    ("extra-parenthesis", "$text(a))", {}, "INVALID_PLACEHOLDER", ["not a valid placeholder"]),
    ("empty-text-name", "$text()", {}, "INVALID_PLACEHOLDER", ["$text()", "not a valid placeholder"]),
    ("five-choices", "$choice(c, a, b, d, e, f)", {}, "INVALID_PLACEHOLDER", ["2 to 4 non-empty options"]),
    ("one-choice", "$choice(c, a)", {}, "INVALID_PLACEHOLDER", ["2 to 4 non-empty options"]),
    ("empty-choice", "$choice(c, a, , b)", {}, "INVALID_PLACEHOLDER", ["2 to 4 non-empty options"]),
    ("trailing-empty-choice", "#choice(c, a, b,)", {}, "INVALID_PLACEHOLDER", ["2 to 4 non-empty options"]),
    ("text-name-with-dotdot", "$text(../etc)", {}, "INVALID_PLACEHOLDER", ["not a valid placeholder"]),
    ("text-name-with-slash", "$text(a/b)", {}, "INVALID_PLACEHOLDER", ["not a valid placeholder"]),
    ("file-name-with-backslash", "$file(a\\b)", {}, "INVALID_PLACEHOLDER", ["not a valid placeholder"]),
    ("file-absolute-path", "$file(/etc/passwd)", {}, "INVALID_PLACEHOLDER", ["not a valid placeholder"]),
    ("file-name-with-nul", "$file(a\x00b)", {}, "INVALID_PLACEHOLDER", ["not a valid placeholder"]),
    ("file-name-256-chars", "$file(" + "f" * 256 + ")", {}, "INVALID_PLACEHOLDER", ["not a valid placeholder"]),
    ("random-with-argument", "$random(1)", {}, "INVALID_PLACEHOLDER", ["$random(1)", "not a valid placeholder"]),
    ("choice-value-not-an-option", "$choice(c, a, b)", {"#c": "z"}, "INVALID_CHOICE", ["#c", "a, b", "'z'"]),
    ("choice-value-sql", "$choice(c, a, b)", {"#c": "a' OR '1'='1"}, "INVALID_CHOICE", ["#c"]),
    ("missing-required-text", "$text(p)", {}, "MISSING_FIELD", ["$p is required"]),
    ("missing-file", "$file(photo)", {}, "MISSING_FIELD", ["$photo is required"]),
    ("text-sent-for-file", "$file(photo)", {"$photo": "not-a-file"}, "INVALID_PLACEHOLDER",
     ["$photo must be a file part"]),
    ("file-sent-for-text", "$text(p)", {"$p": ("a.txt", b"x")}, "INVALID_PLACEHOLDER", ["$p must be a text value"]),
    ("field-for-no-placeholder", "$text(p, d)", {"$other": "x"}, "UNKNOWN_FIELD", ["$other", "matches no placeholder"]),
    ("field-name-with-dotdot", "$text(p, d)", {"$../p": "x"}, "UNKNOWN_FIELD", ["not a valid parameter field name"]),
    ("choice-field-with-slash", "$choice(c, a, b)", {"#c/x": "a"}, "UNKNOWN_FIELD",
     ["not a valid parameter field name"]),
]


@pytest.mark.parametrize(("value", "fields", "reason", "words"),
                         [pytest.param(v, f, r, w, id=i) for i, v, f, r, w in CASES])
async def test_placeholder_abuse(api: Api, value: str, fields: dict[str, Any], reason: str,
                                 words: list[str]) -> None:
    auth = await api.user("placeholders")
    files: dict[str, Any] = {"workflow_json": ("wf.json", json.dumps(graph(value)).encode(), "application/json")}
    files.update({k: v if isinstance(v, tuple) else (None, v) for k, v in fields.items()})
    reply = await api.client.post("/v1/workflow", headers=auth, data={"name": "p"}, files=files)
    await expect(api, reply, auth, 400, reason, *words)


@pytest.mark.parametrize("value", ["$text(a", "prefix_$random()", "$text a)"])
async def test_what_is_not_a_whole_placeholder_is_left_as_text(api: Api, value: str) -> None:
    """Documented (API.md): only a whole string value is a placeholder; the rest stays as it is."""
    auth = await api.user("placeholders-text")
    reply = await api.client.post("/v1/workflow", headers=auth, data={"name": "p"},
                                  files={"workflow_json": ("wf.json", json.dumps(graph(value)).encode())})
    assert reply.status_code == 201, reply.text
    record = (await api.client.get(f"/v1/workflow/{reply.json()['id']}", headers=auth)).json()
    assert record["workflow_json"]["1"]["inputs"]["filename_prefix"] == value


async def test_a_placeholder_nested_in_a_default_is_taken_literally(api: Api) -> None:
    """Documented: a default is text; a placeholder written inside it is never expanded."""
    auth = await api.user("placeholders-nested-default")
    value = "$text(a, $choice(b, x, y))"
    reply = await api.client.post("/v1/workflow", headers=auth, data={"name": "p"},
                                  files={"workflow_json": ("wf.json", json.dumps(graph(value)).encode())})
    assert reply.status_code == 201, reply.text
    record = (await api.client.get(f"/v1/workflow/{reply.json()['id']}", headers=auth)).json()
    assert record["workflow_params"] == [[value, "$choice(b, x, y)"]]
