"""An object's metadata in the local backend: where it is kept, how it is written and read.

    <root>/data/<key>              the object's bytes; its metadata (size, sha256, content
                                   type) as JSON in the file's META_XATTR extended attribute
    <root>/data/<key>.meta.json    a sidecar with that metadata plus the inode of the bytes, only
                                   where the filesystem has no user xattrs (found out at start)
                                   or for an object stored by a version before xattrs

Why an xattr: it lives on the inode of the bytes, so a put creates one file, not two (inode
allocation was a large part of a small put's cost), and it cannot describe other bytes than
its own. (On ext4 with 256-byte inodes the ~120 bytes of JSON do not fit in the inode and take
an xattr block: still one inode, one rename and one fsync fewer than a sidecar.) A sidecar
names the inode it describes, so one left by a crash beside other bytes is not believed.

Every function here blocks; the backend calls them in a worker thread.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from pathlib import Path
from typing import IO, Any

from services.storage.backend import ObjectRef
from services.storage.local_files import create_temp, durable, write_temp

META_SUFFIX = ".meta.json"
META_XATTR = "user.comfyfleet.meta"
_NO_XATTRS = frozenset({errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM})  # what setxattr says where there are none


def meta_path(path: Path) -> Path:
    """Where the sidecar of the object stored at `path` lives."""
    return path.with_name(path.name + META_SUFFIX)


def meta_bytes(ref: ObjectRef, inode: int | None = None) -> bytes:
    """Metadata as stored: what GetObject reports; a sidecar adds the inode of the bytes it describes."""
    fields: dict[str, object] = {"size_bytes": ref.size_bytes, "sha256": ref.sha256, "content_type": ref.content_type}
    if inode is not None:
        fields["inode"] = inode
    return json.dumps(fields).encode("utf-8")


def read_meta(path: Path) -> dict[str, Any]:
    """A sidecar's fields, or {} when it is missing or unreadable."""
    try:
        return _parse_meta(path.read_bytes())
    except (FileNotFoundError, NotADirectoryError):
        return {}


def read_xattr_meta(fd: int) -> dict[str, Any] | None:
    """The fields recorded on an open object file, None when it has none ({} when unreadable)."""
    try:
        raw = os.getxattr(fd, META_XATTR)
    except OSError as err:
        if err.errno == errno.ENODATA or err.errno in _NO_XATTRS:
            return None
        raise
    return _parse_meta(raw)


def _parse_meta(raw: bytes) -> dict[str, Any]:
    try:
        meta = json.loads(raw)
    except ValueError:
        return {}
    return meta if isinstance(meta, dict) else {}


def xattrs_supported(directory: Path) -> bool:
    """Whether files in `directory` take user extended attributes, tried on a temp file there."""
    file, probe = create_temp(directory, "probe-")
    try:
        with file:
            os.setxattr(file.fileno(), META_XATTR, b"{}")
    except OSError as err:
        if err.errno in _NO_XATTRS:
            return False
        raise
    finally:
        probe.unlink(missing_ok=True)
    return True


def seal(file: IO[bytes], ref: ObjectRef, xattrs: bool) -> bytes | None:
    """Makes a written temp file durable with its metadata: recorded on it as an xattr (returns
    None), else returned as the sidecar to commit with it."""
    if xattrs:
        file.flush()
        os.setxattr(file.fileno(), META_XATTR, meta_bytes(ref))
        durable(file)
        return None
    return meta_bytes(ref, durable(file))


def described(key: str, path: Path, fd: int, info: os.stat_result, xattrs: bool) -> ObjectRef | None:
    """The ref of the open object file `fd` at `path` from its xattr, else from a sidecar that
    names its inode; None when neither describes these bytes (not their size: a torn write)."""
    meta = read_xattr_meta(fd) if xattrs else None
    if meta is None:
        meta = read_meta(meta_path(path))
        if meta.get("inode") != info.st_ino:
            return None
    sha256, content_type = meta.get("sha256"), meta.get("content_type")
    if meta.get("size_bytes") != info.st_size or not isinstance(sha256, str) or not isinstance(content_type, str):
        return None
    return ObjectRef(key, info.st_size, sha256, content_type)


def recorded_content_type(path: Path, fd: int, xattrs: bool) -> str | None:
    """The content type the object's metadata records, whatever else in it is wrong."""
    meta = (read_xattr_meta(fd) if xattrs else None) or read_meta(meta_path(path))
    return str(meta["content_type"]) if meta.get("content_type") else None


def rewrite(path: Path, fd: int, ref: ObjectRef, xattrs: bool, tmp: Path) -> None:
    """Replaces the metadata of the object file `fd` at `path` with `ref`, durably."""
    sidecar = meta_path(path)
    if xattrs:
        os.setxattr(fd, META_XATTR, meta_bytes(ref))  # the owner may, though the file is open read-only
        os.fsync(fd)
        with contextlib.suppress(FileNotFoundError):
            sidecar.unlink()
        return
    meta_temp = write_temp(tmp, "meta-", meta_bytes(ref, os.fstat(fd).st_ino))
    try:
        os.replace(meta_temp, sidecar)
    finally:
        meta_temp.unlink(missing_ok=True)
