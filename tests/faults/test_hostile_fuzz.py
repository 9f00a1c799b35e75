"""Hostile input, fuzzed (issue 11, bounded): generated multipart bodies and generated
placeholder abuse, posted to the real suite (gateway, scheduler, storage as processes).
Whatever comes in, the answer is never a 5xx: a 201, or a 4xx with the API.md error body
(`status` repeating the HTTP status, a `message`, a `reason`); and the services still answer
afterwards.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.devrun import Suite, free_port

EXAMPLES = 150
SEEN: Counter[tuple[int, str]] = Counter()  # (status, reason) of every answer


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    var: Path = tmp_path_factory.mktemp("var")
    suite = Suite(var_dir=var, scheduler_port=free_port(), storage_port=free_port(), gateway_port=free_port(),
                  extra_env={"GATEWAY_RATE_LIMIT_REQUESTS": "0"})
    try:
        suite.up()
        with httpx.Client(base_url=suite.gateway_url, timeout=30,
                          headers={"Authorization": f"Bearer {suite.token}"}) as client:
            yield client
            assert client.get("/healthz").status_code == 200
            assert client.get("/v1/user").status_code == 200  # the scheduler still answers
            assert client.get("/readyz").status_code == 200
            sys.stderr.write(f"\nhostile fuzz: {sum(SEEN.values())} requests, "
                             f"(status, reason): {dict(SEEN.most_common())}\n")
    finally:
        suite.down()


def assert_answer(reply: httpx.Response) -> None:
    assert reply.status_code < 500, (reply.status_code, reply.text[:500])
    SEEN[reply.status_code, reply.json().get("reason") or reply.json()["status"]] += 1
    if reply.status_code == 201:
        assert reply.json()["status"] == "accepted"
        return
    assert 400 <= reply.status_code < 500, reply.status_code
    body = reply.json()
    assert body["status"] == reply.status_code, body
    assert isinstance(body["message"], str) and body["message"], body
    assert isinstance(body["reason"], str) and body["reason"].isupper(), body


# -- multipart -------------------------------------------------------------------------------

NASTY_TEXT = st.sampled_from([
    "", "x", "$x", "#x", "$", "#", "../../etc/passwd", "/abs/path", "a\x00b", "é\u202e\u200b", "\r\n", '"',
    "name=\"x\"", "--", "\\", "$prefix", "workflow_json", "name", "tags", "priority", "' OR 1=1 --",
]) | st.text(max_size=40)
BOUNDARY = "fuzzboundary"


@st.composite
def part(draw: st.DrawFn) -> bytes:
    name = draw(NASTY_TEXT)
    disposition = f'form-data; name="{name}"'
    if draw(st.booleans()):
        disposition += f'; filename="{draw(NASTY_TEXT)}"'
    headers = [f"Content-Disposition: {disposition}"]
    if draw(st.booleans()):
        headers.append(f"Content-Type: {draw(st.sampled_from(['application/json', 'image/png', 'text/plain', 'x']))}")
    if draw(st.booleans()):
        headers.append(draw(st.sampled_from(["Content-Transfer-Encoding: base64", "X: " + "y" * 5000, "broken"])))
    content = draw(st.binary(max_size=200) | st.sampled_from([b"{}", b"[]", b'{"1": 2}', b"{" * 2000, b"\xff\xfe"]))
    return ("\r\n".join(headers) + "\r\n\r\n").encode("utf-8", "surrogatepass") + content


@st.composite
def multipart_body(draw: st.DrawFn) -> tuple[str, bytes]:
    parts = draw(st.lists(part(), max_size=6))
    body = b"".join(f"--{BOUNDARY}\r\n".encode() + p + b"\r\n" for p in parts) + f"--{BOUNDARY}--\r\n".encode()
    cut = draw(st.sampled_from(["whole", "truncated", "no-closing", "garbage-prefix"]))
    if cut == "truncated":
        body = body[: draw(st.integers(0, max(0, len(body) - 1)))]
    elif cut == "no-closing":
        body = body.rsplit(f"--{BOUNDARY}--".encode(), 1)[0]
    elif cut == "garbage-prefix":
        body = draw(st.binary(min_size=1, max_size=50)) + body
    content_type = draw(st.sampled_from([
        f"multipart/form-data; boundary={BOUNDARY}", "multipart/form-data", "multipart/form-data; boundary=other",
        f"multipart/form-data; boundary={'b' * 80}", "application/json", "multipart/mixed; boundary=" + BOUNDARY,
        f'multipart/form-data; boundary="{BOUNDARY}"; charset=utf-8',
    ]))
    return content_type, body


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
@given(multipart_body())
def test_generated_multipart_bodies_never_get_a_5xx(gateway: httpx.Client, case: tuple[str, bytes]) -> None:
    content_type, body = case
    assert_answer(gateway.post("/v1/workflow", content=body, headers={"Content-Type": content_type}))


# -- placeholders ----------------------------------------------------------------------------

PLACEHOLDER = st.sampled_from([
    "$text(a)", "$text(a, b)", "$text()", "$text(a", "$text(a))", "$text($text(a))", "$text(../a)", "$text(a/b)",
    "$choice(x, a)", "$choice(x, a, b)", "$choice(x, a, b, c, d, e)", "$choice(x, , b)", "#choice(x, a, b)",
    "$choice(x)", "$file(f)", "$file(../f)", "$file(/etc/passwd)", "$file(a\x00b)", "$file(" + "f" * 300 + ")",
    "$random()", "$random(1)", "$timestamp()", "$timestamp", "prefix_$random()", "$unknown(a)", "$", "$()",
]) | st.text(alphabet="$#()text,choicefilerandom ab_-./\\\x00é", max_size=40)
FIELD = st.sampled_from(["$a", "$b", "#x", "$f", "$a", "#x", "$f", "$", "#", "$../a", "$a/b", "#x\x00",
                         "$" + "n" * 300]) | st.text(max_size=20)


@st.composite
def placeholder_case(draw: st.DrawFn) -> tuple[dict[str, str], dict[str, tuple[str, bytes, str]]]:
    nodes = {}
    for i in range(draw(st.integers(1, 4))):
        inputs = {f"in{j}": draw(PLACEHOLDER) for j in range(draw(st.integers(0, 3)))}
        if draw(st.booleans()):
            inputs["nested"] = {"deeper": draw(PLACEHOLDER)}  # type: ignore[assignment]
        nodes[str(i + 1)] = {"class_type": draw(st.sampled_from(["SaveImage", "LoadImage", "X", ""])),
                             "inputs": inputs}
    # mostly a valid name, so that most cases reach the placeholder checks
    data = {"name": draw(st.sampled_from(["fuzz"] * 4) | st.text(min_size=0, max_size=210))}
    for _ in range(draw(st.integers(0, 4))):
        data[draw(FIELD)] = draw(NASTY_TEXT)
    if draw(st.booleans()):
        data["tags"] = draw(st.sampled_from(["", "a,b", "a b", ",".join("t" * 11), "x" * 1024, "ok,../x"]))
    files = {"workflow_json": ("workflow.json", json.dumps(nodes), "application/json")}
    if draw(st.booleans()):
        files[draw(FIELD) or "$f"] = (draw(NASTY_TEXT) or "f.png", draw(st.binary(max_size=64)), "image/png")
    return data, files


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
@given(placeholder_case())
def test_generated_placeholder_abuse_never_gets_a_5xx(
        gateway: httpx.Client, case: tuple[dict[str, str], dict[str, tuple[str, bytes, str]]]) -> None:
    data, files = case
    assert_answer(gateway.post("/v1/workflow", data=data, files=files))
