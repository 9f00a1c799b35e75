"""Bad tags, on create (multipart `tags`), the list filter (`?tag=`) and runners (JSON `tags`):
each a 400 naming the tag; the services still answer afterwards."""

from __future__ import annotations

import pytest

from tests.api.conftest import Api
from tests.hostile.hostile import expect, workflow_part

ELEVEN = ",".join(f"t{i}" for i in range(11))

# (id, tags, reason, words in the message)
CREATE = [
    ("space-inside-a-tag", "gpu box", "INVALID_TAG", "'gpu box'", "1 to 64"),
    ("eleven-tags", ELEVEN, "TOO_MANY_TAGS", "at most 10", "got 11"),
    ("one-kb-tag", "x" * 1024, "INVALID_TAG", "1 to 64"),
    ("65-char-tag", "y" * 65, "INVALID_TAG", "1 to 64"),
    ("tag-with-slash", "ok,../etc", "INVALID_TAG", "'../etc'"),
    ("tag-with-nul", "a\x00b", "INVALID_TAG", "'a\\x00b'"),
    ("tag-with-newline", "a\r\nSet-Cookie: x=1", "INVALID_TAG", "Set-Cookie"),
    ("unicode-lookalike-tag", "gpu\u200b", "INVALID_TAG", "1 to 64"),
    ("fullwidth-tag", "\uff47\uff50\uff55", "INVALID_TAG", "1 to 64"),
    ("sql-in-tag", "a' OR '1'='1", "INVALID_TAG", "OR"),
]


@pytest.mark.parametrize(("tags", "reason", "words"), [pytest.param(t, r, w, id=i) for i, t, r, *w in CREATE])
async def test_bad_tags_on_create(api: Api, tags: str, reason: str, words: list[str]) -> None:
    auth = await api.user("tags")
    reply = await api.client.post("/v1/workflow", headers=auth, data={"name": "t", "tags": tags},
                                  files={"workflow_json": ("wf.json", workflow_part().split(b"\r\n\r\n", 1)[1]
                                                           .rsplit(b"\r\n", 1)[0])})
    error = await expect(api, reply, auth, 400, reason, *words)
    assert error["details"][0]["field"] == "tags"


# (id, query value, words)
FILTER = [
    ("filter-space", "a b", "'a b'"),
    ("filter-1kb", "z" * 1024, "1 to 64"),
    ("filter-sql", "x' OR 1=1 --", "in tag"),
]


@pytest.mark.parametrize(("tag", "words"), [pytest.param(t, w, id=i) for i, t, *w in FILTER])
async def test_bad_tag_filter(api: Api, tag: str, words: list[str]) -> None:
    auth = await api.user("tag-filter")
    reply = await api.client.get("/v1/workflow", headers=auth, params={"tag": tag})
    await expect(api, reply, auth, 400, "INVALID_FIELD", "tag", *words)


# (id, tags, words)
RUNNER = [
    ("runner-eleven-tags", [f"t{i}" for i in range(11)], "at most 10"),
    ("runner-tag-with-space", ["a b"], "'a b'"),
    ("runner-1kb-tag", ["q" * 1024], "1 to 64"),
]


@pytest.mark.parametrize(("tags", "words"), [pytest.param(t, w, id=i) for i, t, *w in RUNNER])
async def test_bad_runner_tags(api: Api, tags: list[str], words: list[str]) -> None:
    auth = await api.user("runner-tags")
    reply = await api.client.post("/v1/runner", headers=auth,
                                  json={"name": "r", "endpoint": "http://10.0.0.9:8188", "tags": tags})
    error = await expect(api, reply, auth, 400, "INVALID_TAG", *words)
    assert error["details"][0]["field"] == "tags"
