"""Command line: run the ComfyUI double until SIGINT/SIGTERM.

    python -m tests.comfyui_double --host 127.0.0.1 --port 8188 --root DIR [--node-delay-ms N]

DIR gets input/, output/ and temp/ (created if missing; temp/ is wiped on start and exit, as
ComfyUI does). `--node-delay-ms N` makes every executed (non-cached) node take N ms, and every
progress tick of a progress-reporting node (SaveImageWebsocket) take N ms.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from .app import ComfyUIDouble


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.comfyui_double", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8188, help="port (default 8188; 0 picks a free one)")
    parser.add_argument("--root", required=True, help="folder holding input/, output/ and temp/")
    parser.add_argument("--node-delay-ms", type=float, default=0.0,
                        help="time each executed node (or progress tick) takes, in ms (default 0)")
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    double = ComfyUIDouble(args.root, host=args.host, port=args.port, node_delay_ms=args.node_delay_ms)
    port = await double.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # ComfyUI prints the same line when it is ready.
    print(f"To see the GUI go to: http://{args.host}:{port}", flush=True)
    try:
        await stop.wait()
    finally:
        await double.stop()


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(parse_args(argv)))


if __name__ == "__main__":
    main()
