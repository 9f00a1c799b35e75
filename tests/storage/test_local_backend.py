"""The local backend: the shared contract, plus what it leaves (or must not leave) on disk.

Every test runs twice: with the metadata in each file's extended attribute (`xattr`) and in
sidecar files (`sidecar`, the layout on filesystems without user xattrs); a test pinned to
one layout says so with its own `xattrs` parameter. Mixes of both are in test_local_xattr.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from services.storage import local_backend as local_backend_module
from services.storage.backend import ObjectRef
from services.storage.errors import InvalidKey, KeyConflict, ObjectNotFound, ObjectTooLarge, StorageFull
from services.storage.local_backend import SMALL_OBJECT_BYTES, LocalBackend

from .conftest import OpenLocal, files_under
from .contract import BackendContract, MiB, chunked, put_bytes, read, sha
from .local_layout import object_files, overwrite_in_place, recorded_meta

pytestmark = pytest.mark.timeout(15)


class TestLocalBackendContract(BackendContract):
    @pytest.fixture
    def backend(self, local_backend: LocalBackend) -> LocalBackend:
        return local_backend


@pytest.fixture(params=[True, False], ids=["xattr", "sidecar"])
def xattrs(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


@pytest.fixture
async def local_backend(open_local: OpenLocal, xattrs: bool) -> LocalBackend:
    return await open_local(use_xattrs=xattrs)


async def test_an_object_is_its_bytes_plus_its_metadata(
    local_backend: LocalBackend, root: Path, xattrs: bool, caplog: pytest.LogCaptureFixture
) -> None:
    ref = await put_bytes(local_backend, "outputs/wf1/9/a.png", b"\x89PNG...", content_type="image/png")
    assert files_under(root) == object_files("outputs/wf1/9/a.png", xattrs)
    assert (root / "data/outputs/wf1/9/a.png").read_bytes() == b"\x89PNG..."
    meta = recorded_meta(root, "outputs/wf1/9/a.png", xattrs)
    assert (meta["sha256"], meta["size_bytes"], meta["content_type"]) == (ref.sha256, 7, "image/png")
    assert await local_backend.stat("outputs/wf1/9/a.png") == ref
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # read as recorded, not rebuilt


async def test_sidecars_are_never_served_as_objects(local_backend: LocalBackend) -> None:
    await put_bytes(local_backend, "outputs/wf1/9/a.png", b"png")
    for key in ("outputs/wf1/9/a.png.meta.json", "outputs/wf1.meta.json/x"):
        with pytest.raises(InvalidKey, match="reserved"):
            await local_backend.get(key)
        with pytest.raises(InvalidKey, match="reserved"):
            await put_bytes(local_backend, key, b"{}")
    with pytest.raises(ObjectNotFound):
        await local_backend.get("outputs/wf1")  # a directory is not an object


async def test_over_long_path_segments_are_invalid_keys(local_backend: LocalBackend) -> None:
    with pytest.raises(InvalidKey, match="segment"):
        await put_bytes(local_backend, "inputs/" + "a" * 246, b"x")
    await put_bytes(local_backend, "inputs/" + "a" * 245, b"x")


async def test_over_the_limit_leaves_no_file_at_all(local_backend: LocalBackend, root: Path) -> None:
    with pytest.raises(ObjectTooLarge):
        await put_bytes(local_backend, "inputs/wf1/p/big.bin", os.urandom(3 * MiB), max_size_bytes=2 * MiB)
    assert files_under(root) == []


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
async def test_a_full_disk_is_unavailable_and_cleans_up(
    local_backend: LocalBackend, root: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    def disk_full(*_: object) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(local_backend_module, "write_chunks", disk_full)
    with pytest.raises(StorageFull, match="full") as caught:
        await put_bytes(local_backend, "outputs/wf1/9/a.png", os.urandom(2 * MiB))
    assert caught.value.reason == "STORAGE_FULL"
    assert files_under(root) == []


async def test_a_cancelled_put_leaves_nothing_behind(local_backend: LocalBackend, root: Path) -> None:
    started = asyncio.Event()

    async def stalls() -> AsyncIterator[bytes]:
        yield os.urandom(2 * MiB)  # a full write batch reaches the temp file
        started.set()
        await asyncio.Event().wait()
        yield b"never"

    put = asyncio.create_task(local_backend.put("inputs/wf1/p/a.bin", stalls()))
    await started.wait()
    await asyncio.sleep(0.05)
    assert [f for f in files_under(root) if f.startswith("tmp/")], "the put should be mid-way"
    put.cancel()
    with pytest.raises(asyncio.CancelledError):
        await put
    assert files_under(root) == []


async def test_a_streamed_put_cancelled_while_its_temp_file_opens_leaves_nothing_behind(
    local_backend: LocalBackend, root: Path
) -> None:
    async def stalls() -> AsyncIterator[bytes]:
        yield os.urandom(SMALL_OBJECT_BYTES + 1)  # too large to hold: a temp file is opened now
        await asyncio.Event().wait()
        yield b"never"

    for ticks in range(30):  # cancelled after 0, 1, 2, ... turns of the loop: before, during, after the open
        put = asyncio.create_task(local_backend.put("inputs/wf1/p/a.bin", stalls()))
        for _ in range(ticks):
            await asyncio.sleep(0)
        put.cancel()
        with pytest.raises(asyncio.CancelledError):
            await put
        assert files_under(root) == [], ticks


async def test_deletes_remove_emptied_directories(local_backend: LocalBackend, root: Path) -> None:
    await put_bytes(local_backend, "inputs/wf1/a/x.png", b"x")
    await put_bytes(local_backend, "inputs/wf1/b/c/y.png", b"y")
    await put_bytes(local_backend, "outputs/wf1/1/z.png", b"z")
    assert await local_backend.delete(prefix="inputs/wf1/") == 2
    assert await local_backend.delete(["outputs/wf1/1/z.png"]) == 1
    assert not (root / "data/inputs").exists()
    assert not (root / "data/outputs").exists()
    assert (root / "data").is_dir()


@pytest.mark.parametrize("size", [10, SMALL_OBJECT_BYTES + 1])  # held in memory, streamed to a temp file
async def test_a_key_cannot_be_both_an_object_and_a_prefix(local_backend: LocalBackend, root: Path, size: int) -> None:
    await put_bytes(local_backend, "inputs/wf1", b"object")
    with pytest.raises(KeyConflict, match="'inputs/wf1' is an object"):
        await put_bytes(local_backend, "inputs/wf1/p/a.png", b"x" * size)
    await put_bytes(local_backend, "outputs/wf1/1/a.png", b"x")
    with pytest.raises(KeyConflict, match="it is a prefix of other objects"):
        await put_bytes(local_backend, "outputs/wf1", b"x" * size)
    assert [f for f in files_under(root) if f.startswith("tmp/")] == []


@pytest.mark.parametrize("size", [SMALL_OBJECT_BYTES - 1, SMALL_OBJECT_BYTES, SMALL_OBJECT_BYTES + 1, 3 * MiB + 7])
@pytest.mark.parametrize("chunk_size", [1000, 64 * 1024, 4 * MiB])
async def test_objects_around_the_in_memory_limit_keep_bytes_and_metadata(
    local_backend: LocalBackend, root: Path, xattrs: bool, size: int, chunk_size: int
) -> None:
    data = os.urandom(size)
    ref = await local_backend.put("outputs/wf1/9/a.bin", chunked(data, chunk_size), content_type="image/png")
    assert (ref.size_bytes, ref.sha256, ref.content_type) == (size, sha(data), "image/png")
    assert (root / "data/outputs/wf1/9/a.bin").read_bytes() == data
    expected: dict[str, Any] = {"size_bytes": size, "sha256": sha(data), "content_type": "image/png"}
    if not xattrs:  # a sidecar names the inode of the bytes it describes; an xattr is on that inode
        expected["inode"] = (root / "data/outputs/wf1/9/a.bin").stat().st_ino
    assert recorded_meta(root, "outputs/wf1/9/a.bin", xattrs) == expected
    assert files_under(root) == object_files("outputs/wf1/9/a.bin", xattrs)


@pytest.mark.parametrize("xattrs", [False], ids=["sidecar"])
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
async def test_a_full_disk_while_storing_a_small_object_cleans_up(
    local_backend: LocalBackend, root: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    real_write_temp = local_backend_module.write_temp

    def sidecar_does_not_fit(directory: Path, prefix: str, content: bytes) -> Path:
        if prefix == "meta-":  # the bytes' temp file is written, fsynced and waiting for its sidecar
            assert [f for f in files_under(root) if f.startswith("tmp/put-")], "the bytes should be on disk"
            raise OSError(code, os.strerror(code))
        return real_write_temp(directory, prefix, content)

    monkeypatch.setattr(local_backend_module, "write_temp", sidecar_does_not_fit)
    with pytest.raises(StorageFull, match="full"):
        await put_bytes(local_backend, "outputs/wf1/9/a.png", b"\x89PNG" * 20)
    assert files_under(root) == []


@pytest.mark.parametrize("xattrs", [True], ids=["xattr"])
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
@pytest.mark.parametrize("size", [80, SMALL_OBJECT_BYTES + 1])  # held in memory, streamed to a temp file
async def test_a_full_disk_while_setting_the_metadata_attribute_cleans_up(
    local_backend: LocalBackend, root: Path, monkeypatch: pytest.MonkeyPatch, code: int, size: int
) -> None:
    def attribute_does_not_fit(file: object, ref: ObjectRef, xattrs: bool) -> bytes | None:
        # ext4 stores a large attribute in a block of its own, which a full disk cannot give
        assert (ref.size_bytes, xattrs) == (size, True)
        assert [f for f in files_under(root) if f.startswith("tmp/put-")], "the bytes should be on disk"
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(local_backend_module, "seal", attribute_does_not_fit)
    with pytest.raises(StorageFull, match="full"):
        await put_bytes(local_backend, "outputs/wf1/9/a.png", b"x" * size)
    assert files_under(root) == []


async def test_a_small_put_cancelled_at_any_point_leaves_a_whole_object_or_nothing(
    local_backend: LocalBackend, root: Path
) -> None:
    outcomes = set()
    for ticks in range(40):  # cancelled after 0, 1, 2, ... turns of the loop: before, during, after the commit
        key = f"outputs/wf1/{ticks}/a.png"
        put = asyncio.create_task(put_bytes(local_backend, key, b"png bytes %d" % ticks))
        for _ in range(ticks):
            await asyncio.sleep(0)
        put.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await put
        assert [f for f in files_under(root) if f.startswith("tmp/")] == [], ticks
        if await local_backend.exists(key):
            assert (await read(local_backend, key))[1] == [b"png bytes %d" % ticks]
            outcomes.add("stored")
        else:
            assert not (root / "data" / key).exists()
            outcomes.add("nothing")
        await asyncio.wait_for(put_bytes(local_backend, key, b"again"), 5)  # the key's lock was released
    assert outcomes == {"stored", "nothing"}


async def test_deleting_a_prefix_without_objects_removes_its_empty_directories(
    local_backend: LocalBackend, root: Path, xattrs: bool
) -> None:
    await put_bytes(local_backend, "inputs/wf2/p/a.png", b"x")
    (root / "data/inputs/wf1/p/q").mkdir(parents=True)  # left empty, e.g. by a crash during a delete
    assert await local_backend.delete(prefix="inputs/wf1/") == 0
    assert await local_backend.delete(prefix="inputs/wf3/") == 0  # nothing there at all
    assert files_under(root) == object_files("inputs/wf2/p/a.png", xattrs)
    assert sorted(p.name for p in (root / "data/inputs").iterdir()) == ["wf2"]


# with xattrs a commit cannot tear this way: the bytes and their metadata are one inode
@pytest.mark.parametrize("xattrs", [False], ids=["sidecar"])
async def test_a_sidecar_torn_by_a_crash_is_rebuilt_from_the_bytes(local_backend: LocalBackend, root: Path) -> None:
    await put_bytes(local_backend, "outputs/wf1/9/a.png", b"old bytes", content_type="image/png")
    # a crash between moving the new bytes into place and moving their sidecar
    torn = root / "data/outputs/wf1/9/a.png"
    replacement = root / "replacement"
    replacement.write_bytes(b"new bytes, longer")
    os.replace(replacement, torn)

    ref, chunks = await read(local_backend, "outputs/wf1/9/a.png")
    assert chunks == [b"new bytes, longer"]
    assert (ref.size_bytes, ref.sha256, ref.content_type) == (17, sha(b"new bytes, longer"), "image/png")
    assert await local_backend.stat("outputs/wf1/9/a.png") == ref


async def test_bytes_changed_in_place_get_their_metadata_rebuilt(
    local_backend: LocalBackend, root: Path, xattrs: bool
) -> None:
    await put_bytes(local_backend, "outputs/wf1/9/a.png", b"old bytes", content_type="image/png")
    overwrite_in_place(root / "data/outputs/wf1/9/a.png", b"new bytes, longer")  # a torn write

    ref, chunks = await read(local_backend, "outputs/wf1/9/a.png")
    assert chunks == [b"new bytes, longer"]
    assert (ref.size_bytes, ref.sha256, ref.content_type) == (17, sha(b"new bytes, longer"), "image/png")
    meta = recorded_meta(root, "outputs/wf1/9/a.png", xattrs)
    assert (meta["size_bytes"], meta["sha256"], meta["content_type"]) == (17, ref.sha256, "image/png")
    assert files_under(root) == object_files("outputs/wf1/9/a.png", xattrs)
    assert await local_backend.stat("outputs/wf1/9/a.png") == ref


@pytest.mark.parametrize("xattrs", [True], ids=["xattr"])
async def test_a_file_without_metadata_gets_it_from_its_bytes(local_backend: LocalBackend, root: Path) -> None:
    await put_bytes(local_backend, "outputs/wf1/9/a.png", b"old bytes", content_type="image/png")
    replacement = root / "replacement"  # a new inode, without the attribute: nothing recorded its type
    replacement.write_bytes(b"other bytes")
    os.replace(replacement, root / "data/outputs/wf1/9/a.png")

    ref = await local_backend.stat("outputs/wf1/9/a.png")
    assert ref is not None
    assert (ref.size_bytes, ref.sha256, ref.content_type) == (11, sha(b"other bytes"), "application/octet-stream")
    assert recorded_meta(root, "outputs/wf1/9/a.png", xattrs=True) == {
        "size_bytes": 11, "sha256": sha(b"other bytes"), "content_type": "application/octet-stream"}
    assert files_under(root) == ["data/outputs/wf1/9/a.png"]


async def test_unfinished_writes_from_a_crash_are_removed_at_start(root: Path) -> None:
    (root / "tmp").mkdir(parents=True)
    (root / "tmp/put-abc.tmp").write_bytes(b"half an upload")
    await LocalBackend.open(root)
    assert files_under(root) == []


async def test_concurrent_puts_and_deletes_keep_objects_whole(local_backend: LocalBackend, root: Path) -> None:
    payloads = [bytes([i]) * (256 * 1024 + i) for i in range(6)]

    async def churn(i: int) -> None:
        await local_backend.put("inputs/wf1/p/a.bin", chunked(payloads[i], 32 * 1024))
        await local_backend.delete(prefix="inputs/wf1/")

    await asyncio.gather(*(churn(i) for i in range(6)))
    await put_bytes(local_backend, "inputs/wf1/p/a.bin", payloads[0])
    assert (await read(local_backend, "inputs/wf1/p/a.bin"))[1] == [payloads[0]]
    assert [f for f in files_under(root) if f.startswith("tmp/")] == []


@pytest.fixture
def synced_dirs(monkeypatch: pytest.MonkeyPatch, root: Path) -> list[str]:
    """The directories fsynced from now on (after a rename in them, or a directory made in them),
    relative to data/."""
    from services.storage import local_files

    synced: list[str] = []
    real = local_files.fsync_dir

    def recording(directory: Path) -> None:
        synced.append(Path(directory).relative_to(root / "data").as_posix())
        real(directory)

    monkeypatch.setattr(local_files, "fsync_dir", recording)
    monkeypatch.setattr(local_backend_module, "fsync_dir", recording)
    return synced


async def test_the_directories_made_for_a_key_are_named_durably_once(
    local_backend: LocalBackend, synced_dirs: list[str]
) -> None:
    await put_bytes(local_backend, "outputs/wf1/9/a.png", b"a")
    # The file's directory, then each directory made for it in its parent, up to data/.
    assert synced_dirs == ["outputs/wf1/9", "outputs/wf1", "outputs", "."]
    synced_dirs.clear()
    await put_bytes(local_backend, "outputs/wf1/9/b.png", b"b")
    assert synced_dirs == ["outputs/wf1/9"]  # nothing new above it
    synced_dirs.clear()
    await put_bytes(local_backend, "outputs/wf2/9/c.png", b"c")
    assert synced_dirs == ["outputs/wf2/9", "outputs/wf2", "outputs"]  # outputs/ names wf2 now
    # Deleted and made again: synced again.
    assert await local_backend.delete(prefix="outputs/wf1/") == 2
    synced_dirs.clear()
    await put_bytes(local_backend, "outputs/wf1/9/a.png", b"again")
    assert synced_dirs == ["outputs/wf1/9", "outputs/wf1", "outputs"]
    _ref, chunks = await read(local_backend, "outputs/wf1/9/a.png")
    assert b"".join(chunks) == b"again"
