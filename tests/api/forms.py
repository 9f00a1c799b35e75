"""Multipart bodies and graphs the API tests send."""

from __future__ import annotations

import json
from typing import Any

GRAPH = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "$file(photo)"}},
    "2": {"class_type": "KSampler", "inputs": {"sampler_name": "$choice(sampler, euler, dpm)", "seed": "$random()"}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "$text(prefix, out)"}},
}
PLAIN = {"1": {"class_type": "SaveImage", "inputs": {"filename_prefix": "$text(prefix, out)"}}}
PNG = b"\x89PNG\r\n\x1a\n" + b"photo-bytes" * 10


def workflow_files(graph: dict[str, Any] = GRAPH, **extra: tuple[str, bytes, str]) -> dict[str, Any]:
    files: dict[str, Any] = {"workflow_json": ("wf.json", json.dumps(graph).encode(), "application/json")}
    files.update(extra)
    return files
