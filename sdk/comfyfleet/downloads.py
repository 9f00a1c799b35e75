"""Where a downloaded output goes: a folder keeps the output's file name, a path is used as is.

Bytes are written to `<target>.part` and renamed when complete, so a failed download never
leaves a truncated file under the real name.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

from comfyfleet.models import Output

# A signed URL that expired or went stale answers one of these: fetch a fresh one, once.
DOWNLOAD_REFRESH_STATUSES = frozenset({400, 401, 403, 404, 410})


def output_filename(output: Output | str) -> str:
    """The output's file name, or the last segment of its URL; never a path."""
    name = output.filename if isinstance(output, Output) and output.filename else ""
    if not name:
        url = output.src if isinstance(output, Output) else output
        name = unquote(PurePosixPath(urlsplit(url).path).name)
    name = PurePosixPath(name.replace("\\", "/")).name  # no directory parts from the server
    return name if name not in ("", ".", "..") else "output"


def target_path(output: Output | str, dest: str | Path) -> Path:
    dest_text = str(dest)
    path = Path(dest).expanduser()
    if path.is_dir() or dest_text.endswith(("/", os.sep)):
        return path / output_filename(output)
    return path


def partial_path(target: Path) -> Path:
    return target.with_name(target.name + ".part")
