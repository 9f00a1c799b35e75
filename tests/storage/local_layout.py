"""What the local backend leaves on disk for one object, in either of its two layouts.

With xattrs the metadata is in the `user.cf.m` attribute of the object's file: a version byte
(1), the size as 8 bytes big-endian, the raw sha256 (32 bytes), the content type in UTF-8.
Versions before it wrote JSON to `user.comfyfleet.meta`. In the sidecar layout the metadata is
JSON in `<key>.meta.json` beside the file. The names and the layout are the on-disk format,
written out here rather than imported, so a change to them shows up as a failing test.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

META_XATTR = "user.cf.m"
LEGACY_META_XATTR = "user.comfyfleet.meta"
SIDECAR_SUFFIX = ".meta.json"


def object_files(key: str, xattrs: bool) -> list[str]:
    """The files one object leaves under the root: its bytes, plus a sidecar without xattrs."""
    return [f"data/{key}"] if xattrs else [f"data/{key}", f"data/{key}{SIDECAR_SUFFIX}"]


def recorded_meta(root: Path, key: str, xattrs: bool) -> dict[str, Any]:
    """The metadata recorded for an object, read from where its layout keeps it (and only there)."""
    path = root / "data" / key
    sidecar = path.with_name(path.name + SIDECAR_SUFFIX)
    if xattrs:
        assert not sidecar.exists()
        assert LEGACY_META_XATTR not in os.listxattr(path)
        return decode_xattr(os.getxattr(path, META_XATTR))
    assert META_XATTR not in os.listxattr(path)
    return dict(json.loads(sidecar.read_bytes()))


def decode_xattr(value: bytes) -> dict[str, Any]:
    """The fields of a `user.cf.m` value."""
    version, size_bytes, digest = struct.unpack_from(">BQ32s", value)
    assert version == 1
    return {"size_bytes": size_bytes, "sha256": digest.hex(), "content_type": value[41:].decode("utf-8")}


def overwrite_in_place(path: Path, data: bytes) -> None:
    """Writes `data` over the file's start: same inode (and attributes), other bytes and size."""
    with open(path, "r+b") as file:
        file.write(data)
