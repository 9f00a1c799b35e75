"""Hostile file names on `$file` parts. The upload is accepted (201): the client's name is only
kept as the record's `filename` (its last path segment); the stored key is made of safe
characters and never leaves `inputs/{workflow_id}/{param}/`. Checked on disk and in the record."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.api.conftest import Api
from tests.hostile.hostile import MULTIPART, body, part, still_answers, workflow_part

GRAPH = {"1": {"class_type": "LoadImage", "inputs": {"image": "$file(photo)"}}}

# (id, client file name, the stored name under inputs/{id}/photo/)
CASES = [
    ("dotdot", "../../../../etc/passwd", "passwd"),
    ("dotdot-only", "..", "file"),
    ("dotdot-backslash", "..\\..\\windows\\win.ini", "win.ini"),
    ("absolute-path", "/etc/shadow", "shadow"),
    ("windows-absolute", "C:\\Users\\a\\x.png", "x.png"),
    ("nul-byte", "a\x00.png", "a_.png"),
    ("hidden-file", ".bashrc", "bashrc"),
    ("dotdot-in-name", "a..b.png", "a..b.png"),
    ("rtl-override", "cat\u202egnp.exe", "cat_gnp.exe"),
    ("fullwidth-solidus", "..\uff0f..\uff0fetc", "_.._etc"),
    ("zero-width-space", "a\u200b.png", "a_.png"),
    ("accented", "café.png", "cafe.png"),
    ("only-unicode", "照片", "file"),
    ("percent-encoded-dotdot", "%2e%2e%2fsecret", "_2e_2e_2fsecret"),
    ("semicolon-in-name", "x.png; filename=../../y", "y"),
    ("very-long", "a" * 1000 + ".png", "a" * 196 + ".png"),
]


def files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


@pytest.mark.parametrize(("filename", "stored"), [pytest.param(f, s, id=i) for i, f, s in CASES])
async def test_hostile_file_names_stay_under_the_workflows_inputs(api: Api, filename: str, stored: str) -> None:
    auth = await api.user("filenames")
    before = set(files_under(api.objects_dir))
    data = body(part("name", "f"), workflow_part(GRAPH),  # built by hand: the name goes as raw bytes
                part("$photo", b"\x89PNG-bytes", filename=filename, content_type="image/png"))
    reply = await api.client.post("/v1/workflow", headers={**auth, "Content-Type": MULTIPART}, content=data)
    assert reply.status_code == 201, reply.text
    workflow_id = reply.json()["id"]
    inputs = (api.objects_dir / "inputs" / workflow_id / "photo").resolve()
    new = set(files_under(api.objects_dir)) - before  # the object (and its .meta.json without user xattrs)
    assert all(inputs in p.resolve().parents for p in new), new
    layouts = ([inputs / stored], [inputs / stored, inputs / f"{stored}.meta.json"])  # xattr, or sidecar
    assert sorted(p.resolve() for p in new) in layouts, new
    record = (await api.client.get(f"/v1/workflow/{workflow_id}", headers=auth)).json()
    assert record["status"] == "accepted"
    await still_answers(api, auth)
