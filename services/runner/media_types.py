"""Pure: the content type of an output file, from its extension.

ComfyUI's `/view` guesses a type from the extension with Python's `mimetypes`, which depends on
the host's tables (a `.webm` or `.flac` may come back as `application/octet-stream`) and forces
HTML, JavaScript and CSS to `application/octet-stream` (PROTOCOL.md §9). The runner names the type
itself from this table, so an output's type does not depend on the machine ComfyUI runs on; an
extension it does not know keeps what ComfyUI served.
"""

from __future__ import annotations

import posixpath

OCTET_STREAM = "application/octet-stream"

# What ComfyUI's bundled and common custom nodes write: images, animated images, video, audio,
# text and 3D files.
BY_EXTENSION: dict[str, str] = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".gif": "image/gif",
    ".bmp": "image/bmp",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
    ".apng": "image/apng",
    ".avif": "image/avif",
    ".svg": "image/svg+xml",
    ".exr": "image/x-exr",
    ".mp4": "video/mp4",
    ".m4v": "video/mp4",
    ".webm": "video/webm",
    ".mov": "video/quicktime",
    ".mkv": "video/x-matroska",
    ".avi": "video/x-msvideo",
    ".mp3": "audio/mpeg",
    ".wav": "audio/wav",
    ".flac": "audio/flac",
    ".ogg": "audio/ogg",
    ".opus": "audio/opus",
    ".m4a": "audio/mp4",
    ".aac": "audio/aac",
    ".txt": "text/plain",
    ".json": "application/json",
    ".csv": "text/csv",
    ".md": "text/markdown",
    ".glb": "model/gltf-binary",
    ".gltf": "model/gltf+json",
    ".obj": "model/obj",
    ".stl": "model/stl",
    ".ply": "application/ply",
    ".npz": OCTET_STREAM,
    ".safetensors": OCTET_STREAM,
    ".latent": OCTET_STREAM,
}


def content_type_for(filename: str, served: str | None = None) -> str:
    """The type of `filename`: from the table above, else what ComfyUI served, else octet-stream."""
    _, ext = posixpath.splitext(filename.lower())
    known = BY_EXTENSION.get(ext)
    if known is not None:
        return known
    served = (served or "").split(";")[0].strip()
    return served or OCTET_STREAM
