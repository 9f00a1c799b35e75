"""The JSON endpoints of server.py: prompt, queue, interrupt, free, history, object_info, system.

Handlers mirror the server's code paths, so malformed bodies fail the same way: a body that is
not JSON raises inside the handler and aiohttp answers `500 Internal Server Error` in plain text.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.parse
import uuid
from functools import partial
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .files import Handler
from .nodes import NODE_CLASSES, node_info
from .validation import validate_prompt

if TYPE_CHECKING:
    from .app import ComfyUIDouble

COMFYUI_VERSION = "0.3.64"
FRONTEND_VERSION = "1.27.10"
TEMPLATES_VERSION = "0.1.95"
PYTORCH_VERSION = "2.13.0+cpu"  # the recorded build; the double itself has no torch
MAX_UPLOAD_SIZE = 100 * 1024 * 1024
SENSITIVE_EXTRA_DATA_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")
MODEL_FOLDERS = ["checkpoints", "configs", "loras", "vae", "text_encoders", "diffusion_models", "clip_vision",
                 "style_models", "embeddings", "diffusers", "vae_approx", "controlnet", "gligen", "upscale_models",
                 "custom_nodes", "hypernetworks", "photomaker", "classifiers", "model_patches", "audio_encoders"]


def server_features() -> dict[str, Any]:
    return {"supports_preview_metadata": True, "max_upload_size": MAX_UPLOAD_SIZE}


def has_prompt_id(prompt_id: Any, item: tuple[Any, ...]) -> bool:
    return bool(item[1] == prompt_id)


def _memory() -> tuple[int, int]:
    page = os.sysconf("SC_PAGE_SIZE")
    return os.sysconf("SC_PHYS_PAGES") * page, os.sysconf("SC_AVPHYS_PAGES") * page


def api_routes(server: ComfyUIDouble) -> list[tuple[str, str, Handler]]:
    queue = server.prompt_queue

    async def system_stats(request: web.Request) -> web.Response:
        total, free = _memory()
        return web.json_response({
            "system": {
                "os": os.name, "ram_total": total, "ram_free": free, "comfyui_version": COMFYUI_VERSION,
                "required_frontend_version": FRONTEND_VERSION, "installed_templates_version": TEMPLATES_VERSION,
                "required_templates_version": TEMPLATES_VERSION, "python_version": sys.version,
                "pytorch_version": PYTORCH_VERSION, "embedded_python": False, "argv": sys.argv,
            },
            "devices": [{"name": "cpu", "type": "cpu", "index": None, "vram_total": total, "vram_free": free,
                         "torch_vram_total": total, "torch_vram_free": free}],
        })

    async def features(request: web.Request) -> web.Response:
        return web.json_response(server_features())

    async def get_prompt(request: web.Request) -> web.Response:
        return web.json_response(server.queue_info())

    async def post_prompt(request: web.Request) -> web.Response:
        json_data = await request.json()
        if "number" in json_data:
            number = float(json_data["number"])
        else:
            number = server.number
            if "front" in json_data and json_data["front"]:  # noqa: RUF019 (`in` also works on a list body)
                number = -number
            server.number += 1
        if "prompt" not in json_data:
            no_prompt = {"type": "no_prompt", "message": "No prompt provided", "details": "No prompt provided",
                         "extra_info": {}}
            return web.json_response({"error": no_prompt, "node_errors": {}}, status=400)
        prompt = json_data["prompt"]
        prompt_id = str(json_data.get("prompt_id", uuid.uuid4()))
        partial = json_data.get("partial_execution_targets")
        valid, error, outputs, node_errors = validate_prompt(server.folders, prompt, partial)
        extra_data = json_data.get("extra_data", {})
        if "client_id" in json_data:
            extra_data["client_id"] = json_data["client_id"]
        if not valid:
            return web.json_response({"error": error, "node_errors": node_errors}, status=400)
        sensitive = {key: extra_data.pop(key) for key in SENSITIVE_EXTRA_DATA_KEYS if key in extra_data}
        queue.put((number, prompt_id, prompt, extra_data, outputs, sensitive))
        return web.json_response({"prompt_id": prompt_id, "number": number, "node_errors": node_errors})

    async def get_queue(request: web.Request) -> web.Response:
        running, pending = queue.current_queue()
        return web.json_response({"queue_running": [list(item[:5]) for item in running],
                                  "queue_pending": [list(item[:5]) for item in pending]})

    async def post_queue(request: web.Request) -> web.Response:
        json_data = await request.json()
        if "clear" in json_data and json_data["clear"]:  # noqa: RUF019 (as the server; a list body is a no-op)
            queue.wipe_queue()
        if "delete" in json_data:
            for id_to_delete in json_data["delete"]:
                queue.delete_queue_item(partial(has_prompt_id, id_to_delete))
        return web.Response(status=200)

    async def post_interrupt(request: web.Request) -> web.Response:
        try:
            json_data = await request.json()
        except json.JSONDecodeError:  # no body (or not JSON): a global interrupt
            json_data = {}
        prompt_id = json_data.get("prompt_id")
        if prompt_id:
            # Only the running prompt can be interrupted; a pending or unknown id is ignored.
            running, _ = queue.current_queue()
            if any(item[1] == prompt_id for item in running):
                server.interrupt.set()
        else:
            server.interrupt.set()
        return web.Response(status=200)

    async def post_free(request: web.Request) -> web.Response:
        json_data = await request.json()
        unload_models = json_data.get("unload_models", False)
        free_memory = json_data.get("free_memory", False)
        if unload_models:
            queue.set_flag("unload_models", unload_models)
        if free_memory:
            queue.set_flag("free_memory", free_memory)
        return web.Response(status=200)

    async def get_history(request: web.Request) -> web.Response:
        query = request.rel_url.query
        max_items = int(query["max_items"]) if "max_items" in query else None
        offset = int(query["offset"]) if "offset" in query else -1
        return web.json_response(queue.get_history(max_items=max_items, offset=offset))

    async def get_history_entry(request: web.Request) -> web.Response:
        return web.json_response(queue.get_history(prompt_id=request.match_info["prompt_id"]))

    async def post_history(request: web.Request) -> web.Response:
        json_data = await request.json()
        if "clear" in json_data and json_data["clear"]:  # noqa: RUF019 (as the server; a list body is a no-op)
            queue.wipe_history()
        if "delete" in json_data:
            for id_to_delete in json_data["delete"]:
                queue.delete_history_item(id_to_delete)
        return web.Response(status=200)

    async def object_info(request: web.Request) -> web.Response:
        return web.json_response({name: node_info(name, server.folders) for name in NODE_CLASSES})

    async def object_info_class(request: web.Request) -> web.Response:
        name = urllib.parse.unquote(request.match_info["node_class"])
        return web.json_response({name: node_info(name, server.folders)} if name in NODE_CLASSES else {})

    async def embeddings(request: web.Request) -> web.Response:
        return web.json_response([])

    async def models(request: web.Request) -> web.Response:
        return web.json_response(MODEL_FOLDERS)

    async def model_files(request: web.Request) -> web.Response:
        if request.match_info["folder"] not in MODEL_FOLDERS:
            return web.Response(status=404)
        return web.json_response([])  # the double has no model files

    return [
        ("GET", "/system_stats", system_stats), ("GET", "/features", features),
        ("GET", "/prompt", get_prompt), ("POST", "/prompt", post_prompt),
        ("GET", "/queue", get_queue), ("POST", "/queue", post_queue),
        ("POST", "/interrupt", post_interrupt), ("POST", "/free", post_free),
        ("GET", "/history", get_history), ("GET", "/history/{prompt_id}", get_history_entry),
        ("POST", "/history", post_history),
        ("GET", "/object_info", object_info), ("GET", "/object_info/{node_class}", object_info_class),
        ("GET", "/embeddings", embeddings), ("GET", "/models", models), ("GET", "/models/{folder}", model_files),
    ]
