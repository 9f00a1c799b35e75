"""Malformed multipart bodies on POST /v1/workflow: each is a 400 (413 for a part over its
limit) with the API.md error body, and the services still answer afterwards."""

from __future__ import annotations

import pytest

from tests.api.conftest import Api
from tests.hostile.hostile import BOUNDARY, MULTIPART, PLAIN, body, expect, part, workflow_part

GOOD = body(part("name", "ok"), workflow_part())
NESTED = (b"--inner\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\nx\r\n--inner--\r\n")

# (id, Content-Type, body, status, reason, words in the message)
CASES: list[tuple[str, str | None, bytes, int, str, *tuple[str, ...]]] = [
    ("no-content-type", None, GOOD, 400, "UNSUPPORTED_CONTENT_TYPE", "multipart/form-data"),
    ("json-content-type", "application/json", b'{"name": "x"}', 400, "UNSUPPORTED_CONTENT_TYPE",
     "multipart/form-data"),
    ("multipart-mixed", f"multipart/mixed; boundary={BOUNDARY}", GOOD, 400, "UNSUPPORTED_CONTENT_TYPE",
     "multipart/form-data"),
    ("no-boundary", "multipart/form-data", GOOD, 400, "MALFORMED_MULTIPART", "boundary"),
    ("empty-boundary", "multipart/form-data; boundary=", GOOD, 400, "MALFORMED_MULTIPART", "boundary"),
    ("boundary-over-70", "multipart/form-data; boundary=" + "b" * 71, GOOD, 400, "MALFORMED_MULTIPART", "boundary"),
    ("wrong-boundary", "multipart/form-data; boundary=someotherboundary", GOOD, 400, "MALFORMED_MULTIPART",
     "malformed"),
    ("empty-body", MULTIPART, b"", 400, "MALFORMED_MULTIPART", "ended early"),
    ("truncated-in-headers", MULTIPART, GOOD[:30], 400, "MALFORMED_MULTIPART", "ended early"),
    ("truncated-in-data", MULTIPART, GOOD[:-40], 400, "MALFORMED_MULTIPART", "ended early"),
    ("no-closing-boundary", MULTIPART, body(part("name", "ok"), workflow_part(), close=False), 400,
     "MALFORMED_MULTIPART", "ended early"),
    ("garbage-before-boundary", MULTIPART, b"\x00\xffjunk" + GOOD, 400, "MALFORMED_MULTIPART", "malformed"),
    ("no-content-disposition", MULTIPART,
     f"--{BOUNDARY}\r\nContent-Type: text/plain\r\n\r\nx\r\n--{BOUNDARY}--\r\n".encode(), 400,
     "MALFORMED_MULTIPART", "Content-Disposition"),
    ("disposition-without-name", MULTIPART,
     f"--{BOUNDARY}\r\nContent-Disposition: form-data; filename=\"a\"\r\n\r\nx\r\n--{BOUNDARY}--\r\n".encode(),
     400, "MALFORMED_MULTIPART", "Content-Disposition"),
    ("disposition-attachment", MULTIPART,
     f"--{BOUNDARY}\r\nContent-Disposition: attachment; name=\"name\"\r\n\r\nx\r\n--{BOUNDARY}--\r\n".encode(),
     400, "MALFORMED_MULTIPART", "Content-Disposition"),
    ("nested-multipart-as-workflow", MULTIPART,
     body(part("name", "ok"), part("workflow_json", NESTED, filename="wf.json", content_type="multipart/mixed")),
     400, "INVALID_WORKFLOW", "workflow_json is not valid JSON"),
    ("nested-multipart-as-field", MULTIPART,
     body(part("name", "ok"), workflow_part(), part("$prefix", NESTED, content_type="multipart/form-data; "
                                                    "boundary=inner"), part("$prefix", "again")),
     400, "DUPLICATE_FIELD", "$prefix", "more than once"),
    ("duplicate-name", MULTIPART, body(part("name", "a"), part("name", "b"), workflow_part()), 400,
     "DUPLICATE_FIELD", "'name'", "more than once"),
    ("duplicate-workflow-json", MULTIPART, body(part("name", "a"), workflow_part(), workflow_part()), 400,
     "DUPLICATE_FIELD", "'workflow_json'", "more than once"),
    ("duplicate-file-field", MULTIPART,
     body(part("name", "a"), workflow_part(), part("$f", b"1", filename="a.png"), part("$f", b"2", filename="b.png")),
     400, "DUPLICATE_FIELD", "'$f'", "more than once"),
    ("ten-thousand-tiny-parts", MULTIPART,
     body(part("name", "a"), workflow_part(), *(part(f"$p{i}", "x") for i in range(10_000))), 400,
     "UNKNOWN_FIELD", "$p0", "matches no placeholder"),
    ("ten-thousand-empty-parts-same-name", MULTIPART,
     body(part("name", "a"), workflow_part(), *(part("tags", "") for _ in range(10_000))), 400,
     "DUPLICATE_FIELD", "'tags'"),
    ("one-megabyte-field-name", MULTIPART, body(part("$" + "n" * (1024 * 1024), "x"), part("name", "a"),
                                                workflow_part()),
     400, "MALFORMED_MULTIPART", "header size"),
    ("one-megabyte-file-field-name", MULTIPART, body(part("$" + "n" * (1024 * 1024), b"x", filename="a.png"),
                                                     part("name", "a"), workflow_part()),
     400, "MALFORMED_MULTIPART", "header size"),
    ("300-char-field-name", MULTIPART, body(part("$" + "n" * 300, "x"), part("name", "a"), workflow_part()),
     400, "UNKNOWN_FIELD", "is not a valid parameter field name"),
    ("300-char-file-field-name", MULTIPART, body(part("$" + "n" * 300, b"x", filename="a.png"),
                                                 part("name", "a"), workflow_part()),
     400, "INVALID_FIELD", "invalid file field", "1 to 255"),
    ("filename-quote-injects-a-name", MULTIPART,
     body(part("name", "a"), workflow_part(), part("$f", b"x", filename='x.png"; name="name')), 400,
     "DUPLICATE_FIELD", "'name'", "more than once"),
    ("empty-field-name", MULTIPART, body(part("", "x"), part("name", "a"), workflow_part()), 400,
     "UNKNOWN_FIELD", "unknown field ''"),
    ("unknown-field", MULTIPART, body(part("name", "a"), workflow_part(), part("nme", "x")), 400,
     "UNKNOWN_FIELD", "unknown field 'nme'"),
    ("missing-name", MULTIPART, body(workflow_part()), 400, "MISSING_FIELD", "'name'"),
    ("missing-workflow-json", MULTIPART, body(part("name", "a")), 400, "MISSING_FIELD", "'workflow_json'"),
    ("text-field-over-1mb", MULTIPART, body(part("name", "n" * (1024 * 1024 + 1)), workflow_part()), 413,
     "FIELD_TOO_LARGE", "'name'", "1 MB"),
]


@pytest.mark.parametrize(("content_type", "data", "status", "reason", "words"),
                         [pytest.param(c, d, s, r, w, id=i) for i, c, d, s, r, *w in CASES])
async def test_malformed_multipart(api: Api, content_type: str | None, data: bytes, status: int, reason: str,
                                   words: list[str]) -> None:
    auth = await api.user("multipart")
    headers = {**auth, **({"Content-Type": content_type} if content_type else {})}
    reply = await api.client.post("/v1/workflow", headers=headers, content=data)
    await expect(api, reply, auth, status, reason, *words)
    assert (await api.client.get("/v1/workflow", headers=auth)).json()["total"] == 0  # nothing was created


async def test_the_same_body_well_formed_is_accepted(api: Api) -> None:
    """The control: the body the cases above break is a good one."""
    auth = await api.user("multipart-control")
    reply = await api.client.post("/v1/workflow", headers={**auth, "Content-Type": MULTIPART}, content=GOOD)
    assert reply.status_code == 201, reply.text
    assert PLAIN  # the graph it carries
