"""Invalid UTF-8 in every text part and in JSON bodies: a 400 naming the field, never a 500."""

from __future__ import annotations

import pytest

from tests.api.conftest import Api
from tests.hostile.hostile import MULTIPART, PLAIN, body, expect, part, workflow_part

BAD_BYTES = {"lone-continuation": b"\x80", "ff": b"ok\xff", "overlong-slash": b"..\xc0\xaf..",
             "utf16-surrogate": b"\xed\xa0\x80", "truncated-sequence": b"caf\xc3"}
ONE_OF_EACH = list(BAD_BYTES.items())

# (id, parts, reason, words)
CASES: list[tuple[str, list[bytes], str, *tuple[str, ...]]] = [
    (f"name-{k}", [part("name", v), workflow_part()], "INVALID_FIELD", "'name'", "not valid UTF-8")
    for k, v in ONE_OF_EACH] + [
    ("tags-invalid-utf8", [part("name", "n"), workflow_part(), part("tags", b"gpu,\xff")], "INVALID_FIELD",
     "'tags'", "not valid UTF-8"),
    ("priority-invalid-utf8", [part("name", "n"), workflow_part(), part("priority", b"hi\xfegh")], "INVALID_FIELD",
     "'priority'", "not valid UTF-8"),
    ("text-value-invalid-utf8", [part("name", "n"), workflow_part(PLAIN), part("$prefix", b"\xc3\x28")],
     "INVALID_FIELD", "'$prefix'", "not valid UTF-8"),
    ("workflow-json-invalid-utf8", [part("name", "n"), workflow_part(b'{"1": {"class_type": "\xff"}}')],
     "INVALID_FIELD", "'workflow_json'", "not valid UTF-8"),
    ("workflow-json-utf16", [part("name", "n"), workflow_part('{"1": {"class_type": "N"}}'.encode("utf-16"))],
     "INVALID_FIELD", "'workflow_json'", "not valid UTF-8"),
    ("workflow-json-with-bom", [part("name", "n"), workflow_part(b'\xef\xbb\xbf{"1": {"class_type": "N"}}')],
     "INVALID_WORKFLOW", "workflow_json is not valid JSON", "BOM"),
    ("field-name-invalid-utf8", [part("name", "n"), workflow_part(),
                                 b"--hostileboundary\r\nContent-Disposition: form-data; name=\"$\xff\"\r\n\r\nx\r\n"],
     "UNKNOWN_FIELD", "not a valid parameter field name"),
]


@pytest.mark.parametrize(("parts", "reason", "words"), [pytest.param(p, r, w, id=i) for i, p, r, *w in CASES])
async def test_invalid_utf8_in_a_form(api: Api, parts: list[bytes], reason: str, words: list[str]) -> None:
    auth = await api.user("encoding")
    reply = await api.client.post("/v1/workflow", headers={**auth, "Content-Type": MULTIPART}, content=body(*parts))
    await expect(api, reply, auth, 400, reason, *words)


@pytest.mark.parametrize("data", [b'{"name": "r\xff", "endpoint": "http://10.0.0.1"}', b"\xfe\xff\x00{",
                                  b'{"name": "\\ud800\\udfff\\ud800", "endpoint": 1'],
                         ids=["json-invalid-utf8", "json-bad-bom", "json-surrogates-truncated"])
async def test_invalid_utf8_in_a_json_body(api: Api, data: bytes) -> None:
    auth = await api.user("encoding-json")
    reply = await api.client.post("/v1/runner", headers={**auth, "Content-Type": "application/json"}, content=data)
    await expect(api, reply, auth, 400, "INVALID_JSON", "not valid JSON")
