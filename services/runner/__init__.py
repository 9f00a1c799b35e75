"""The runner: the agent beside each ComfyUI.

It holds one session stream to the scheduler (`session.py`), runs each `Assignment` it is
given against its ComfyUI (`execution.py`), follows ComfyUI's websocket (`comfyui_feed.py`),
turns ComfyUI messages into `RunnerEvent`s (`comfyui_messages.py`, pure), and moves file
bytes between ComfyUI and the storage service (`storage_client.py`). `server.py` wires it up.
"""
