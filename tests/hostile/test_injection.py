"""SQL and header injection strings in every text field. Where a field takes free text (a
workflow's name, a $text value, a runner's or template's name and description) the string is
stored and returned exactly as sent, nothing else changes, and no header is injected into the
response; where a field has a grammar (priority, status, page, endpoint, header names and
values, Idempotency-Key) it is a 400 naming the field."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.api.conftest import Api
from tests.hostile.hostile import MULTIPART, PLAIN, body, expect, part, still_answers, workflow_part

SQL = "x'); DROP TABLE workflows; --"
SQL_OR = "' OR '1'='1' --"
HEADER = "x\r\nSet-Cookie: session=stolen\r\nX-Injected: 1"
LIKE = "%_\\%"
STRINGS = {"sql-drop": SQL, "sql-or": SQL_OR, "header-crlf": HEADER, "like-wildcards": LIKE,
           "nul": "a\x00b", "json-breakout": '"}, "status": "completed", "x": {"'}


def no_injected_headers(headers: object) -> None:
    assert "set-cookie" not in headers and "x-injected" not in headers  # type: ignore[operator]


@pytest.mark.parametrize("value", list(STRINGS.values()), ids=list(STRINGS))
async def test_free_text_in_a_workflow_is_kept_verbatim(api: Api, value: str) -> None:
    auth = await api.user("inject-workflow")
    data = body(part("name", value), workflow_part(PLAIN), part("$prefix", value))
    reply = await api.client.post("/v1/workflow", headers={**auth, "Content-Type": MULTIPART}, content=data)
    assert reply.status_code == 201, reply.text
    no_injected_headers(reply.headers)
    record = (await api.client.get(f"/v1/workflow/{reply.json()['id']}", headers=auth)).json()
    assert (record["name"], record["status"]) == (value, "accepted")
    assert record["workflow_params"] == [["$text(prefix, out)", value]]
    listed = (await api.client.get("/v1/workflow", headers=auth)).json()
    assert listed["total"] == 1  # the string touched no other row
    await still_answers(api, auth)


@pytest.mark.parametrize("value", [SQL, HEADER, SQL_OR], ids=["sql-drop", "header-crlf", "sql-or"])
async def test_free_text_in_a_runner_and_a_template_is_kept_verbatim(api: Api, value: str) -> None:
    auth = await api.user("inject-runner")
    reply = await api.client.post("/v1/runner", headers=auth, json={"name": value, "endpoint": "http://10.0.0.7:8188"})
    assert reply.status_code == 201, reply.text
    assert reply.json()["name"] == value
    no_injected_headers(reply.headers)
    reply = await api.client.post("/v1/template", headers=auth, files={
        "name": (None, value), "description": (None, value), "body": ("b.json", json.dumps(PLAIN).encode())})
    assert reply.status_code == 201, reply.text
    template = (await api.client.get(f"/v1/template/{reply.json()['id']}", headers=auth)).json()
    assert (template["name"], template["description"]) == (value, value)
    await still_answers(api, auth)


# (id, (where, field, value), reason, words)
GRAMMAR: list[tuple[str, tuple[str, str, Any], str, *tuple[str, ...]]] = [
    ("priority-sql", ("create", "priority", SQL), "INVALID_FIELD", "priority must be low, normal or high"),
    ("priority-crlf", ("create", "priority", HEADER), "INVALID_FIELD", "priority must be"),
    ("choice-sql", ("create", "#c", SQL_OR), "INVALID_CHOICE", "#c must be one of"),
    ("status-filter-sql", ("query", "status", SQL_OR), "INVALID_FIELD", "status must be one of"),
    ("page-sql", ("query", "page", "1; DROP TABLE workflows"), "INVALID_FIELD", "page must be an integer"),
    ("per-page-sql", ("query", "per_page", "1 OR 1=1"), "INVALID_FIELD", "per_page must be an integer"),
    ("runner-endpoint-sql", ("runner", "endpoint", SQL), "INVALID_ENDPOINT", "invalid endpoint URL"),
    ("runner-endpoint-crlf", ("runner", "endpoint", "http://10.0.0.8:8188/\r\nHost: evil"), "INVALID_ENDPOINT",
     "invalid endpoint URL"),
    ("runner-header-value-crlf", ("runner", "headers", {"Authorization": HEADER}), "INVALID_HEADERS",
     "printable text on one line"),
    ("runner-header-name-crlf", ("runner", "headers", {"X-A\r\nX-B": "v"}), "INVALID_HEADERS",
     "is not a header name"),
    ("runner-header-name-sql", ("runner", "headers", {SQL: "v"}), "INVALID_HEADERS", "is not a header name"),
    ("idempotency-key-non-ascii", ("idempotency", "Idempotency-Key", "k\u00e9y"), "INVALID_IDEMPOTENCY_KEY",
     "Idempotency-Key"),
]


@pytest.mark.parametrize(("how", "reason", "words"), [pytest.param(h, r, w, id=i) for i, h, r, *w in GRAMMAR])
async def test_injection_into_a_field_with_a_grammar_is_400(api: Api, how: tuple[str, str, Any], reason: str,
                                                             words: list[str]) -> None:
    auth = await api.user("inject-grammar")
    where, field, value = how
    if where == "create":
        graph = {"1": {"class_type": "N", "inputs": {"s": "$choice(c, a, b)"}}}
        reply = await api.client.post("/v1/workflow", headers=auth, data={"name": "w", field: value},
                                      files={"workflow_json": ("wf.json", json.dumps(graph).encode())})
    elif where == "query":
        reply = await api.client.get("/v1/workflow", headers=auth, params={field: value})
    elif where == "runner":
        reply = await api.client.post("/v1/runner", headers=auth,
                                      json={"name": "r", "endpoint": "http://10.0.0.8:8188", field: value})
    else:
        reply = await api.client.post("/v1/workflow", data={"name": "w"},
                                      headers=[(k.encode(), v.encode()) for k, v in
                                               [*auth.items(), (field, str(value))]],
                                      files={"workflow_json": ("wf.json", json.dumps(PLAIN).encode())})
    error = await expect(api, reply, auth, 400, reason, *words)
    no_injected_headers(reply.headers)
    assert error["details"][0]["field"] in (field, "Idempotency-Key")
    assert (await api.client.get("/v1/workflow", headers=auth)).json()["total"] == 0
