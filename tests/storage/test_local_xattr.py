"""The local backend across its two layouts: objects stored with sidecars (by older versions,
or on a filesystem without user xattrs) next to objects whose metadata is in an xattr; the
compact xattr next to the JSON one earlier versions wrote; and which layout `open` picks for a
filesystem.

Two backends on one directory are used one after the other, like an upgrade: never at once.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.storage.backend import DEFAULT_CONTENT_TYPE
from services.storage.local_backend import SMALL_OBJECT_BYTES, LocalBackend

from .conftest import OpenLocal, files_under
from .contract import put_bytes, read, sha
from .local_layout import (
    LEGACY_META_XATTR,
    META_XATTR,
    decode_xattr,
    object_files,
    overwrite_in_place,
    recorded_meta,
)

pytestmark = pytest.mark.timeout(15)

KEY = "outputs/wf1/9/a.png"


@pytest.fixture
async def sidecar_backend(open_local: OpenLocal) -> LocalBackend:
    """A backend that stores sidecars, as versions before xattrs did."""
    return await open_local(use_xattrs=False)


@pytest.fixture
async def xattr_backend(open_local: OpenLocal, sidecar_backend: LocalBackend) -> LocalBackend:
    """A backend that stores xattrs, on the same directory (opened after `sidecar_backend`)."""
    return await open_local(use_xattrs=True)


async def test_an_object_stored_with_a_sidecar_reads_the_same_with_xattrs_on(
    sidecar_backend: LocalBackend, xattr_backend: LocalBackend, root: Path
) -> None:
    stored = await put_bytes(sidecar_backend, KEY, b"\x89PNG old", content_type="image/png")
    assert await read(xattr_backend, KEY) == (stored, [b"\x89PNG old"])
    assert await xattr_backend.stat(KEY) == stored
    assert files_under(root) == object_files(KEY, xattrs=False)  # a read changes nothing
    assert recorded_meta(root, KEY, xattrs=False)["sha256"] == sha(b"\x89PNG old")


@pytest.mark.parametrize("size", [20, SMALL_OBJECT_BYTES + 1])  # held in memory, streamed to a temp file
async def test_overwriting_an_object_stored_with_a_sidecar_removes_the_sidecar(
    sidecar_backend: LocalBackend, xattr_backend: LocalBackend, root: Path, size: int
) -> None:
    await put_bytes(sidecar_backend, KEY, b"old bytes", content_type="text/plain")
    data = os.urandom(size)
    ref = await put_bytes(xattr_backend, KEY, data, content_type="image/png")
    assert files_under(root) == [f"data/{KEY}"]
    assert recorded_meta(root, KEY, xattrs=True) == {
        "size_bytes": size, "sha256": sha(data), "content_type": "image/png"}
    assert await xattr_backend.stat(KEY) == ref


async def test_a_stale_sidecar_beside_an_object_with_its_xattr_is_ignored_and_deleted_with_it(
    sidecar_backend: LocalBackend, xattr_backend: LocalBackend, root: Path
) -> None:
    await put_bytes(sidecar_backend, KEY, b"old bytes", content_type="text/plain")
    sidecar = root / "data" / f"{KEY}.meta.json"
    stale = sidecar.read_bytes()
    ref = await put_bytes(xattr_backend, KEY, b"new bytes", content_type="image/png")
    sidecar.write_bytes(stale)  # as if the put crashed after moving its bytes in, before the unlink

    assert await read(xattr_backend, KEY) == (ref, [b"new bytes"])
    assert await xattr_backend.delete(prefix="outputs/") == 1  # one object, listed once
    assert files_under(root) == []


async def test_deletes_and_prefix_listings_count_each_object_once_over_both_layouts(
    sidecar_backend: LocalBackend, xattr_backend: LocalBackend, root: Path
) -> None:
    for key in ("inputs/wf1/p/a.png", "inputs/wf1/q/b.png", "outputs/wf1/1/e.png"):
        await put_bytes(sidecar_backend, key, b"sidecar layout")
    for key in ("inputs/wf1/p/c.png", "outputs/wf1/1/d.png"):
        await put_bytes(xattr_backend, key, b"xattr layout")
    assert len(files_under(root)) == 3 * 2 + 2

    assert await xattr_backend.delete(["inputs/wf1/p/a.png"]) == 1
    assert "data/inputs/wf1/p/a.png.meta.json" not in files_under(root)
    assert await xattr_backend.delete(prefix="inputs/wf1/") == 2
    assert await sidecar_backend.delete(prefix="outputs/") == 2
    assert files_under(root) == []


async def test_a_torn_object_stored_with_a_sidecar_gets_its_metadata_rebuilt_into_its_xattr(
    sidecar_backend: LocalBackend, xattr_backend: LocalBackend, root: Path
) -> None:
    await put_bytes(sidecar_backend, KEY, b"old bytes", content_type="image/png")
    overwrite_in_place(root / "data" / KEY, b"new bytes, longer")

    ref, chunks = await read(xattr_backend, KEY)
    assert chunks == [b"new bytes, longer"]
    assert (ref.size_bytes, ref.sha256, ref.content_type) == (17, sha(b"new bytes, longer"), "image/png")
    assert files_under(root) == [f"data/{KEY}"]
    assert recorded_meta(root, KEY, xattrs=True) == {
        "size_bytes": 17, "sha256": ref.sha256, "content_type": "image/png"}
    assert await xattr_backend.stat(KEY) == ref


# -- the compact xattr next to the JSON one earlier versions wrote ---------------------------


def store_as_json_versions_did(path: Path) -> None:
    """Swaps an object file's compact xattr for the JSON one versions before it wrote."""
    fields = decode_xattr(os.getxattr(path, META_XATTR))
    os.removexattr(path, META_XATTR)
    os.setxattr(path, LEGACY_META_XATTR, json.dumps(fields).encode("utf-8"))


def user_xattrs(path: Path) -> dict[str, bytes]:
    return {name: os.getxattr(path, name) for name in os.listxattr(path) if name.startswith("user.")}


def rebuilt(caplog: pytest.LogCaptureFixture) -> bool:
    return any(r.getMessage() == f"rebuilt the metadata of {KEY!r} from its bytes" for r in caplog.records)


async def test_an_object_with_the_json_xattr_of_earlier_versions_reads_as_it_was_stored(
    xattr_backend: LocalBackend, root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stored = await put_bytes(xattr_backend, KEY, b"\x89PNG old", content_type="image/png")
    path = root / "data" / KEY
    store_as_json_versions_did(path)
    before = user_xattrs(path)
    assert list(before) == [LEGACY_META_XATTR]

    assert await read(xattr_backend, KEY) == (stored, [b"\x89PNG old"])
    assert await xattr_backend.stat(KEY) == stored
    assert user_xattrs(path) == before  # a read changes nothing
    assert not rebuilt(caplog)


async def test_a_torn_object_with_the_json_xattr_gets_the_compact_one_in_its_place(
    xattr_backend: LocalBackend, root: Path
) -> None:
    await put_bytes(xattr_backend, KEY, b"old bytes", content_type="image/png")
    path = root / "data" / KEY
    store_as_json_versions_did(path)
    overwrite_in_place(path, b"new bytes, longer")

    ref, chunks = await read(xattr_backend, KEY)
    assert chunks == [b"new bytes, longer"]
    assert (ref.size_bytes, ref.sha256, ref.content_type) == (17, sha(b"new bytes, longer"), "image/png")
    assert list(user_xattrs(path)) == [META_XATTR]
    assert recorded_meta(root, KEY, xattrs=True) == {
        "size_bytes": 17, "sha256": ref.sha256, "content_type": "image/png"}


HEAD = b"\x01" + (9).to_bytes(8, "big") + bytes.fromhex(sha(b"old bytes"))  # a valid start for b"old bytes"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        (META_XATTR, HEAD[:40]),  # cut short inside the sha256
        (META_XATTR, b"\x02" + HEAD[1:] + b"image/png"),  # a version this one does not know
        (META_XATTR, HEAD + b"image/\xff"),  # a content type that is not UTF-8
        (LEGACY_META_XATTR, b'{"size_bytes": 9, "sha256"'),  # cut short
        (LEGACY_META_XATTR, b"[9]"),  # JSON, not an object
    ],
    ids=["compact-short", "compact-version", "compact-utf8", "json-short", "json-list"],
)
async def test_an_xattr_that_parses_as_neither_form_is_no_metadata_and_is_rebuilt(
    xattr_backend: LocalBackend, root: Path, caplog: pytest.LogCaptureFixture, name: str, value: bytes
) -> None:
    await put_bytes(xattr_backend, KEY, b"old bytes", content_type="image/png")
    path = root / "data" / KEY
    os.removexattr(path, META_XATTR)
    os.setxattr(path, name, value)

    ref = await xattr_backend.stat(KEY)
    assert ref is not None
    assert (ref.size_bytes, ref.sha256, ref.content_type) == (9, sha(b"old bytes"), DEFAULT_CONTENT_TYPE)
    assert rebuilt(caplog)
    assert list(user_xattrs(path)) == [META_XATTR]
    assert recorded_meta(root, KEY, xattrs=True) == {
        "size_bytes": 9, "sha256": sha(b"old bytes"), "content_type": DEFAULT_CONTENT_TYPE}


async def test_the_compact_xattr_wins_over_a_json_one_left_beside_it(
    xattr_backend: LocalBackend, root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ref = await put_bytes(xattr_backend, KEY, b"new bytes", content_type="image/png")
    stale = {"size_bytes": 9, "sha256": sha(b"old bytes"), "content_type": "text/plain"}
    os.setxattr(root / "data" / KEY, LEGACY_META_XATTR, json.dumps(stale).encode("utf-8"))  # as a crash mid-rebuild

    assert await read(xattr_backend, KEY) == (ref, [b"new bytes"])
    assert not rebuilt(caplog)


def blocks_of_durable_file(path: Path, data: bytes, xattr: tuple[str, bytes] | None = None) -> int:
    """Writes and fsyncs a file (with an attribute, if given); the blocks it takes on disk."""
    with open(path, "wb") as file:
        file.write(data)
        if xattr:
            os.setxattr(file.fileno(), *xattr)
        os.fsync(file.fileno())
    return path.stat().st_blocks


def xattr_takes_a_block(directory: Path, name: str, value: bytes) -> bool:
    """Whether a 4 KiB file with this attribute takes more of the disk than one without."""
    data = os.urandom(4096)
    plain = blocks_of_durable_file(directory / "plain", data)
    return blocks_of_durable_file(directory / "attributed", data, (name, value)) > plain


async def test_the_metadata_of_a_small_object_takes_no_disk_block_of_its_own(
    xattr_backend: LocalBackend, root: Path, tmp_path: Path
) -> None:
    # 41 bytes + "application/octet-stream" under a 4-character name: in the inode on ext4 with
    # 256-byte inodes (~92 bytes for xattrs), where the ~140 bytes of JSON took a block
    if xattr_takes_a_block(tmp_path, "user.abcd", os.urandom(41 + len(DEFAULT_CONTENT_TYPE))):
        pytest.skip(f"a 65-byte xattr takes a block of its own on the filesystem of {tmp_path}")
    data = os.urandom(4096)
    await put_bytes(xattr_backend, KEY, data)
    assert (root / "data" / KEY).stat().st_blocks == blocks_of_durable_file(tmp_path / "bare", data)


# -- which layout `open` picks ----------------------------------------------------------------


def takes_user_xattrs(directory: Path) -> bool:
    probe = directory / "probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, "user.test", b"1")
        return True
    except OSError:
        return False
    finally:
        probe.unlink()


@pytest.fixture
def ramfs(tmp_path: Path) -> Iterator[Path]:
    """A ramfs mount: a real filesystem without user xattrs (mounting it needs root)."""
    path = tmp_path / "ramfs"
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "ramfs", "ramfs", str(path)], capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a ramfs (needs root): {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


async def test_open_keeps_metadata_in_xattrs_where_the_filesystem_takes_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if not takes_user_xattrs(tmp_path):
        pytest.skip(f"{tmp_path} does not take user xattrs")
    caplog.set_level(logging.INFO, logger="services.storage.local_backend")
    backend = await LocalBackend.open(tmp_path / "objects")
    ref = await put_bytes(backend, KEY, b"png", content_type="image/png")
    assert files_under(tmp_path / "objects") == [f"data/{KEY}"]  # the probe left nothing in tmp/
    assert META_XATTR in os.listxattr(tmp_path / "objects/data" / KEY)
    assert await read(backend, KEY) == (ref, [b"png"])
    assert [r.getMessage() for r in caplog.records] == [
        f"object metadata is kept in the {META_XATTR} extended attribute of each file"]


async def test_open_falls_back_to_sidecars_where_the_filesystem_has_no_user_xattrs(
    ramfs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="services.storage.local_backend")
    backend = await LocalBackend.open(ramfs / "objects")
    ref = await put_bytes(backend, KEY, b"png", content_type="image/png")
    assert files_under(ramfs / "objects") == object_files(KEY, xattrs=False)
    assert recorded_meta(ramfs / "objects", KEY, xattrs=False)["content_type"] == "image/png"
    assert await read(backend, KEY) == (ref, [b"png"])
    assert [r.getMessage() for r in caplog.records] == [
        "object metadata is kept in .meta.json sidecar files (no user extended attributes)"]
