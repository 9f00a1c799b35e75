"""SSE framing and the keep-alive pump."""

from __future__ import annotations

from services.gateway import sse


def test_an_event_frame_has_id_event_and_data_lines() -> None:
    assert sse.frame('{"a":1}', event="status", id=7) == b'id: 7\nevent: status\ndata: {"a":1}\n\n'


def test_multi_line_data_becomes_several_data_lines() -> None:
    assert sse.frame("one\ntwo") == b"data: one\ndata: two\n\n"
    assert sse.frame("") == b"data: \n\n"


def test_fields_cannot_inject_lines() -> None:
    assert sse.frame("x", event="a\nb", id="1\r\n2") == b"id: 1  2\nevent: a b\ndata: x\n\n"


def test_json_frames_are_one_compact_line() -> None:
    framed = sse.json_frame({"message": "line1\nline2", "name": "é"}, event="log", id=3)
    assert framed == 'id: 3\nevent: log\ndata: {"message":"line1\\nline2","name":"é"}\n\n'.encode()


def test_retry_and_comment() -> None:
    assert sse.retry() == b"retry: 3000\n\n"
    assert sse.comment("keepalive") == b": keepalive\n\n"
