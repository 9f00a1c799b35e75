"""`python -m bench._doubles --count N --root DIR [--node-delay-ms MS]`: N ComfyUI doubles in one process.

Prints one JSON line `{"ports": [...]}` once all listen, then serves until SIGTERM/SIGINT.
One process for many doubles keeps a 10-runner fleet from costing 10 interpreters.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal

from services.common import event_loop
from tests.comfyui_double import ComfyUIDouble


async def serve(count: int, root: str, delay_ms: float) -> None:
    doubles = [ComfyUIDouble(os.path.join(root, f"comfyui-{i}"), port=0, node_delay_ms=delay_ms) for i in range(count)]
    ports = [await d.start() for d in doubles]
    print(json.dumps({"ports": ports}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for d in doubles:
            await d.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--root", required=True)
    parser.add_argument("--node-delay-ms", type=float, default=0.0)
    args = parser.parse_args()
    # On the suite's own loop (uvloop): the doubles stand for ComfyUI on other machines, so the
    # less of the benchmark machine's 2 cores they take, the more the figures are the suite's.
    event_loop.run(serve(args.count, args.root, args.node_delay_ms))


if __name__ == "__main__":
    main()
