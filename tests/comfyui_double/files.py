"""Folders and file endpoints: folder_paths helpers, POST /upload/image, /upload/mask, GET /view.

The handlers follow ComfyUI's server.py step by step, including what happens on odd input (an
unknown upload `type` is an unhandled error there, hence a 500 here too).
"""

from __future__ import annotations

import hashlib
import io
import json
import mimetypes
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from PIL import Image
from PIL.PngImagePlugin import PngInfo

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Folders:
    """The double's root (ComfyUI's base path) and its absolute input/, output/ and temp/."""

    root: str
    input: str
    output: str
    temp: str

    @classmethod
    def under(cls, root: str) -> Folders:
        return cls(root, *(os.path.join(root, name) for name in ("input", "output", "temp")))

    def by_type(self, type_name: str) -> str | None:
        return {"input": self.input, "output": self.output, "temp": self.temp}.get(type_name)


def annotated_filepath(folders: Folders, name: str) -> tuple[str, str | None]:
    """folder_paths.annotated_filepath: "x.png [output]" -> ("x.png", output dir)."""
    for suffix, base in ((" [output]", folders.output), (" [input]", folders.input), (" [temp]", folders.temp)):
        if name.endswith(suffix.strip()):
            return name[: -len(suffix)], base
    return name, None


def exists_annotated_filepath(folders: Folders, name: str) -> bool:
    name, base = annotated_filepath(folders, name)
    return os.path.exists(os.path.join(base or folders.input, name))


def get_save_image_path(filename_prefix: str, output_dir: str, width: int = 0,
                        height: int = 0) -> tuple[str, str, int, str, str]:
    """folder_paths.get_save_image_path: the next counter after the highest existing file."""

    def map_filename(filename: str) -> tuple[int, str]:
        prefix_len = len(os.path.basename(filename_prefix))
        prefix = filename[: prefix_len + 1]
        try:
            digits = int(filename[prefix_len + 1 :].split("_")[0])
        except ValueError:
            digits = 0
        return digits, prefix

    if "%" in filename_prefix:
        now = time.localtime()
        for key, value in (("%width%", str(width)), ("%height%", str(height)), ("%year%", str(now.tm_year)),
                           ("%month%", f"{now.tm_mon:02}"), ("%day%", f"{now.tm_mday:02}"),
                           ("%hour%", f"{now.tm_hour:02}"), ("%minute%", f"{now.tm_min:02}"),
                           ("%second%", f"{now.tm_sec:02}")):
            filename_prefix = filename_prefix.replace(key, value)
    subfolder = os.path.dirname(os.path.normpath(filename_prefix))
    filename = os.path.basename(os.path.normpath(filename_prefix))
    full_output_folder = os.path.join(output_dir, subfolder)
    common = os.path.commonpath((output_dir, os.path.abspath(full_output_folder)))
    if common != output_dir:
        raise Exception(
            "**** ERROR: Saving image outside the output folder is not allowed."
            f"\n full_output_folder: {os.path.abspath(full_output_folder)}"
            f"\n         output_dir: {output_dir}"
            f"\n         commonpath: {common}"
        )
    try:
        matches = [m for m in map(map_filename, os.listdir(full_output_folder))
                   if os.path.normcase(m[1][:-1]) == os.path.normcase(filename) and m[1][-1] == "_"]
        counter = max(matches)[0] + 1
    except ValueError:
        counter = 1
    except FileNotFoundError:
        os.makedirs(full_output_folder, exist_ok=True)
        counter = 1
    return full_output_folder, filename, counter, subfolder, filename_prefix


def _same_bytes(filepath: str, data: bytes) -> bool:
    if not os.path.exists(filepath):
        return False
    with open(filepath, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest() == hashlib.sha256(data).hexdigest()


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


SaveFunction = Callable[[bytes, Any, str], None]


def image_upload(folders: Folders, post: Any, save: SaveFunction | None = None) -> web.Response:
    """server.py image_upload: duplicate detection by hash, ' (n)' renaming, overwrite flag."""
    image = post.get("image")
    overwrite = post.get("overwrite")
    is_duplicate = False
    upload_type = post.get("type")
    if upload_type is None:
        upload_type = "input"
    if upload_type == "input":
        upload_dir = folders.input
    elif upload_type == "temp":
        upload_dir = folders.temp
    elif upload_type == "output":
        upload_dir = folders.output
    if not (image and image.file):  # a plain text field has no .file: a 500 as on the real server
        return web.Response(status=400)
    filename = image.filename
    if not filename:
        return web.Response(status=400)
    subfolder = post.get("subfolder", "")
    full_output_folder = os.path.join(upload_dir, os.path.normpath(subfolder))
    filepath = os.path.abspath(os.path.join(full_output_folder, filename))
    if os.path.commonpath((upload_dir, filepath)) != upload_dir:
        return web.Response(status=400)
    os.makedirs(full_output_folder, exist_ok=True)
    data = image.file.read()
    image.file.seek(0)
    stem, ext = os.path.splitext(filename)
    if overwrite is None or overwrite not in ("true", "1"):
        i = 1
        while os.path.exists(filepath):
            if _same_bytes(filepath, data):
                is_duplicate = True
                break
            filename = f"{stem} ({i}){ext}"
            filepath = os.path.join(full_output_folder, filename)
            i += 1
    if not is_duplicate:
        if save is not None:
            save(data, post, filepath)
        else:
            _write(filepath, data)
    return web.json_response({"name": filename, "subfolder": subfolder, "type": upload_type})


def _resolve_ref(folders: Folders, ref: dict[str, Any]) -> str | None:
    """The file an /upload/mask `original_ref` names, or None where the server gives up."""
    filename, output_dir = annotated_filepath(folders, ref["filename"])
    if not filename or filename[0] == "/" or ".." in filename:
        return None
    if output_dir is None:
        output_dir = folders.by_type(ref.get("type", "output"))
    if output_dir is None:
        return None
    if ref.get("subfolder", "") != "":
        full = os.path.join(output_dir, ref["subfolder"])
        if os.path.commonpath((os.path.abspath(full), output_dir)) != output_dir:
            return None
        output_dir = full
    return os.path.join(output_dir, filename)


def save_mask(folders: Folders) -> SaveFunction:
    """/upload/mask: the upload's alpha channel onto `original_ref`, saved under the new name."""

    def save(data: bytes, post: Any, filepath: str) -> None:
        file = _resolve_ref(folders, json.loads(post.get("original_ref")))
        if file is None or not os.path.isfile(file):
            return  # the server writes nothing and still answers 200
        with Image.open(file) as original:
            metadata = PngInfo()
            for key, value in getattr(original, "text", {}).items():
                metadata.add_text(key, value)
            rgba = original.convert("RGBA")
            rgba.putalpha(Image.open(io.BytesIO(data)).convert("RGBA").getchannel("A"))
            rgba.save(filepath, compress_level=4, pnginfo=metadata)

    return save


def _disposition(filename: str) -> dict[str, str]:
    return {"Content-Disposition": f'filename="{filename}"'}


def _encode(img: Image.Image, **save_args: Any) -> bytes:
    out = io.BytesIO()
    img.save(out, **save_args)
    return out.getvalue()


def view_file(folders: Folders, query: Any) -> web.StreamResponse:
    """GET /view: 400 / 403 / 404 with empty bodies, else the file (or a re-encoded preview)."""
    if "filename" not in query:
        return web.Response(status=404)
    filename, output_dir = annotated_filepath(folders, query["filename"])
    if not filename or filename[0] == "/" or ".." in filename:
        return web.Response(status=400)
    if output_dir is None:
        output_dir = folders.by_type(query.get("type", "output"))
    if output_dir is None:
        return web.Response(status=400)
    if "subfolder" in query:
        full = os.path.join(output_dir, query["subfolder"])
        if os.path.commonpath((os.path.abspath(full), output_dir)) != output_dir:
            return web.Response(status=403)
        output_dir = full
    filename = os.path.basename(filename)
    file = os.path.join(output_dir, filename)
    if not os.path.isfile(file):
        return web.Response(status=404)
    channel = query.get("channel", "rgba")
    if "preview" in query:
        info = query["preview"].split(";")
        image_format = info[0]
        if image_format not in ("webp", "jpeg") or "a" in query.get("channel", ""):
            image_format = "webp"
        quality = int(info[-1]) if info[-1].isdigit() else 90
        with Image.open(file) as opened:
            img: Image.Image = opened
            if image_format == "jpeg" or query.get("channel", "") == "rgb":
                img = img.convert("RGB")
            body = _encode(img, format=image_format, quality=quality)
        return web.Response(body=body, content_type=f"image/{image_format}", headers=_disposition(filename))
    if channel == "rgb":
        with Image.open(file) as img:
            rgb = Image.merge("RGB", img.split()[:3]) if img.mode == "RGBA" else img.convert("RGB")
            body = _encode(rgb, format="PNG")
        return web.Response(body=body, content_type="image/png", headers=_disposition(filename))
    if channel == "a":
        with Image.open(file) as img:
            alpha = img.split()[3] if img.mode == "RGBA" else Image.new("L", img.size, 255)
            alpha_img = Image.new("RGBA", alpha.size)
            alpha_img.putalpha(alpha)
            body = _encode(alpha_img, format="PNG")
        return web.Response(body=body, content_type="image/png", headers=_disposition(filename))
    content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
    if content_type in {"text/html", "text/html-sandboxed", "application/xhtml+xml", "text/javascript", "text/css"}:
        content_type = "application/octet-stream"
    return web.FileResponse(file, headers={**_disposition(filename), "Content-Type": content_type})


def file_routes(folders: Folders) -> list[tuple[str, str, Handler]]:
    async def upload_image(request: web.Request) -> web.Response:
        return image_upload(folders, await request.post())

    async def upload_mask(request: web.Request) -> web.Response:
        return image_upload(folders, await request.post(), save_mask(folders))

    async def view_image(request: web.Request) -> web.StreamResponse:
        return view_file(folders, request.rel_url.query)

    return [("POST", "/upload/image", upload_image), ("POST", "/upload/mask", upload_mask),
            ("GET", "/view", view_image)]
