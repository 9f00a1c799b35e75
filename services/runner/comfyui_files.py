"""Adapter: ComfyUI's output/ and temp/ folders, read directly when the runner shares its disk.

In the Helm chart the runner sits in ComfyUI's pod, and ComfyUI's folders are volumes of that
pod: the agent mounts them read-only and reads each output file itself (`--comfyui-dir`, the
folder ComfyUI runs in) instead of asking ComfyUI's single HTTP server for it with GET /view.
ComfyUI writes a file before it reports the node `executed`, so the file is whole when the
runner hears of it.

`ComfyUIFolders.path` names the file as /view would find it (PROTOCOL.md §8, ComfyUI's
server.py): the type picks the folder, the subfolder must stay inside it, only the basename of
the filename counts. Whatever /view would refuse or treat specially (a `..`, an absolute name,
an annotated name like `x.png [temp]`, an unknown type) gets no path here, and the caller asks
/view, which answers as ComfyUI does. So does a file that is not where it should be (ComfyUI
started with another --output-directory, say): `open` raises FileNotFoundError and the client
falls back to /view, logging it once.

The file is opened and its first INLINE_READ_BYTES read on the event loop: ComfyUI has just
written it, so it is in the page cache (256 KiB take ~12 us here), and a hand-off to a worker
thread and back cost more than the read (in `bench.throughput` the runners' CPU per workflow
went down ~8% without it). What is left of a larger file is read in a worker thread.
"""

from __future__ import annotations

import asyncio
import mimetypes
import os
from collections.abc import AsyncGenerator
from typing import IO

from services.runner.comfyui_messages import OutputFile
from services.runner.errors import ComfyUIError

# ComfyUI's /view serves these as application/octet-stream (never as a page a browser runs).
_NOT_SERVED_AS = {"text/html", "text/javascript", "application/javascript", "text/css"}
INLINE_READ_BYTES = 256 * 1024
_TYPES = ("output", "temp")  # "input" is ours: we uploaded those files, we never copy them back


class ComfyUIFolders:
    """ComfyUI's base folder: `<root>/output` and `<root>/temp`, as ComfyUI lays them out."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self._folders = {name: os.path.join(self.root, name) for name in _TYPES}

    def path(self, output: OutputFile) -> str | None:
        """Where /view would read `output` from, or None when only /view should answer."""
        folder = self._folders.get(output.type)
        name = output.filename
        if folder is None or not name or name[0] == "/" or ".." in name or name.endswith("]"):
            return None
        if output.subfolder:
            inside = os.path.abspath(os.path.join(folder, output.subfolder))
            if os.path.commonpath((inside, folder)) != folder:
                return None
            folder = inside
        return os.path.join(folder, os.path.basename(name))


def served_type(filename: str) -> str | None:
    """The Content-Type /view would send for `filename` (from its extension)."""
    guessed = mimetypes.guess_type(filename)[0]
    return "application/octet-stream" if guessed in _NOT_SERVED_AS else guessed


def open_first(path: str, chunk_bytes: int) -> tuple[IO[bytes] | None, bytes]:
    """Opens a regular file and reads its first chunk, in one go (blocking). The file comes
    back open only when there may be more to read; FileNotFoundError when `path` is not a
    regular file (a directory, a pipe)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(path)
    file = open(path, "rb")  # closed here at its end, else by read_chunks
    try:
        first = file.read(chunk_bytes)
    except BaseException:
        file.close()
        raise
    if len(first) < chunk_bytes:  # a short read of a regular file: its end
        file.close()
        return None, first
    return file, first


async def read_chunks(file: IO[bytes] | None, first: bytes, chunk_bytes: int) -> AsyncGenerator[bytes, None]:
    """`first`, then the rest of `file` (if open), `chunk_bytes` at a time, each read in a
    worker thread; closes the file. A read that fails is a ComfyUIError (the copy is retried)."""
    try:
        if first:
            yield first
        while file is not None:
            try:
                chunk = await asyncio.to_thread(file.read, chunk_bytes)
            except OSError as err:
                raise ComfyUIError(f"reading {file.name}: {err}") from err
            if not chunk:
                return
            yield chunk
    finally:
        if file is not None:
            file.close()
