"""Field rules of the create form: tags, name, priority, file names, content types."""

from __future__ import annotations

import pytest
from comfyfleet.scheduler.v1 import workflow_pb2

from services.common.errors import InvalidArgument
from services.gateway.workflow_form import (
    client_filename,
    media_type,
    parse_name,
    parse_priority,
    parse_tags,
    sanitise_filename,
)

OCTETS = "application/octet-stream"


@pytest.mark.parametrize(
    ("raw", "tags"),
    [
        ("", []),
        ("gpu", ["gpu"]),
        (" gpu , fast,gpu ,, ", ["gpu", "fast"]),  # spaces, empty items and duplicates ignored
        ("A,a", ["A", "a"]),  # case-sensitive
        ("v1.5,sd_xl,flux-dev", ["v1.5", "sd_xl", "flux-dev"]),
        ("x" * 64, ["x" * 64]),
        (",".join(f"t{i}" for i in range(10)), [f"t{i}" for i in range(10)]),
        (",".join(["same"] * 20), ["same"]),
    ],
)
def test_good_tags(raw: str, tags: list[str]) -> None:
    assert parse_tags(raw) == tags


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("no spaces", "INVALID_TAG"),
        ("gpu,ünïcode", "INVALID_TAG"),
        ("x" * 65, "INVALID_TAG"),
        ("a/b", "INVALID_TAG"),
        (",".join(f"t{i}" for i in range(11)), "TOO_MANY_TAGS"),
    ],
)
def test_bad_tags_name_the_field(raw: str, reason: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_tags(raw)
    assert caught.value.reason == reason
    assert caught.value.details[0]["field"] == "tags"


def test_name_is_1_to_200_characters() -> None:
    assert parse_name("a") == "a"
    assert parse_name("é" * 200) == "é" * 200
    for bad in ("", "   ", "x" * 201):
        with pytest.raises(InvalidArgument) as caught:
            parse_name(bad)
        assert caught.value.details == [{"field": "name"}]


def test_priority_words() -> None:
    assert parse_priority("low") == workflow_pb2.PRIORITY_LOW
    assert parse_priority("normal") == workflow_pb2.PRIORITY_NORMAL
    assert parse_priority(" high ") == workflow_pb2.PRIORITY_HIGH
    with pytest.raises(InvalidArgument) as caught:
        parse_priority("urgent")
    assert caught.value.details == [{"field": "priority", "value": "urgent"}]


@pytest.mark.parametrize(
    ("filename", "safe"),
    [
        ("cat.png", "cat.png"),
        ("my photo (1).JPG", "my_photo_1_.JPG"),
        ("C:\\Users\\ada\\cat.png", "cat.png"),
        ("../../etc/passwd", "passwd"),
        (".hidden", "hidden"),
        ("café.png", "cafe.png"),
        ("猫.png", "_.png"),
        ("...", "file"),
        ("", "file"),
        ("x" * 300 + ".png", "x" * 196 + ".png"),
    ],
)
def test_file_names_are_made_storage_safe(filename: str, safe: str) -> None:
    assert sanitise_filename(filename) == safe


def test_the_client_file_name_drops_any_path() -> None:
    assert client_filename("a/b/c.txt") == "c.txt"
    assert client_filename("C:\\x\\y.txt") == "y.txt"


@pytest.mark.parametrize(
    ("header", "recorded"),
    [("image/png", "image/png"), ("text/plain; charset=utf-8", "text/plain; charset=utf-8"), (None, OCTETS),
     ("", OCTETS), ("png", OCTETS), ("\u00ff/x", OCTETS), ("image/png; x=\u00ff", OCTETS)],
)
def test_a_file_parts_content_type_is_recorded_when_it_looks_like_one(header: str | None, recorded: str) -> None:
    assert media_type(header) == recorded
