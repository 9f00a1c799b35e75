"""The local backend across its two layouts: objects stored with sidecars (by older versions,
or on a filesystem without user xattrs) next to objects whose metadata is in an xattr, and
which layout `open` picks for a filesystem.

Two backends on one directory are used one after the other, like an upgrade: never at once.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from services.storage.local_backend import SMALL_OBJECT_BYTES, LocalBackend

from .conftest import files_under
from .contract import put_bytes, read, sha
from .local_layout import META_XATTR, object_files, overwrite_in_place, recorded_meta

pytestmark = pytest.mark.timeout(15)

KEY = "outputs/wf1/9/a.png"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "objects"


@pytest.fixture
async def sidecar_backend(root: Path) -> AsyncIterator[LocalBackend]:
    """A backend that stores sidecars, as versions before xattrs did."""
    backend = await LocalBackend.open(root, use_xattrs=False)
    yield backend
    await backend.close()


@pytest.fixture
async def xattr_backend(root: Path, sidecar_backend: LocalBackend) -> AsyncIterator[LocalBackend]:
    """A backend that stores xattrs, on the same directory (opened after `sidecar_backend`)."""
    backend = await LocalBackend.open(root, use_xattrs=True)
    yield backend
    await backend.close()


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
