"""A test double of ComfyUI 0.3.64 (HTTP + WebSocket), built from recorded real-server transcripts.

In process::

    double = ComfyUIDouble(root=tmp_path, port=0, node_delay_ms=0)
    port = await double.start()
    ...
    await double.stop()

As a process: ``python -m tests.comfyui_double --host 127.0.0.1 --port 8188 --root DIR``.
The recordings it was built from, and their analysis (``PROTOCOL.md``), are in ``transcripts/``;
``test_against_recordings.py`` replays them against the double.

Modules: app (server, websocket, worker), routes (JSON endpoints), files (upload, view, folder
helpers), validation, executor + graph (running prompts, caching, progress), nodes (the node
classes), images (Pillow batches, torch-style reprs), prompt_queue, errors (recorded tracebacks);
recording + replay + replayer are the test-side replay machinery.
"""

from .app import ComfyUIDouble
from .routes import COMFYUI_VERSION

__all__ = ["COMFYUI_VERSION", "ComfyUIDouble"]
