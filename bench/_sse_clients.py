"""SSE subscribers for bench/sse_fanout.py, in a process of their own:
`python -m bench._sse_clients --port P --count N --first I --workflows W1,W2,...`.

Opens N raw HTTP/1.1 subscriptions (subscriber i watches workflow i mod W, starting at
`--first`), `--batch` at a time, each read by a bare asyncio.Protocol (no stream reader,
no task per connection: the client must stay lighter than the gateway it measures; uvloop
when installed). Prints `connected` once all are open. Commands on stdin: `probe` prints
{"worst": s}, the largest delivery latency since the previous probe (to wait for a backlog
to drain); between `start` and `stop`, it records for each event frame the delay from its
publish time (the log message the scheduler double put in it) to its receipt; `stop`
prints one JSON line {"latencies": [s, ...], "frames": n} and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import resource
import sys
import time

MARK = b'"message":"'


def raise_fd_limit() -> None:
    """Soft RLIMIT_NOFILE up to the hard one: one descriptor per connection."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Recorder:
    def __init__(self) -> None:
        self.measuring = False
        self.latencies: list[float] = []
        self.worst = 0.0  # the largest latency since the last `probe`


class Subscriber(asyncio.Protocol):
    """One subscription: sends the request, then scans the body for data lines."""

    def __init__(self, request: bytes, recorder: Recorder, opened: asyncio.Future[None]) -> None:
        self.request = request
        self.recorder = recorder
        self.opened = opened
        self.head = True
        self.rest = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(self.request)  # type: ignore[attr-defined]  # uvloop's is no asyncio.Transport

    def data_received(self, data: bytes) -> None:
        now = time.time()
        data = self.rest + data
        if self.head:
            if b"\r\n\r\n" not in data:
                self.rest = data
                return
            head, _, data = data.partition(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                self.opened.set_exception(RuntimeError(head.decode(errors="replace")))
                return
            self.head = False
            self.opened.set_result(None)
        cut = data.rfind(b"\n")
        self.rest = data[cut + 1:]
        recorder = self.recorder
        for line in data[:cut].split(b"\n"):
            if line.startswith(b"data: ") and MARK in line:
                latency = now - float(json.loads(line[6:])["message"])
                if recorder.measuring:
                    recorder.latencies.append(latency)
                elif latency > recorder.worst:
                    recorder.worst = latency

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError("closed before the response"))


async def run(port: int, count: int, first: int, workflows: list[str], batch: int) -> None:
    loop = asyncio.get_running_loop()
    recorder = Recorder()
    transports = []
    for start in range(first, first + count, batch):
        opened = []
        for n in range(start, min(first + count, start + batch)):
            request = (f"GET /v1/workflow/{workflows[n % len(workflows)]}/subscribe HTTP/1.1\r\nHost: bench\r\n"
                       "Authorization: Bearer bench\r\n\r\n").encode()
            future: asyncio.Future[None] = loop.create_future()
            transport, _ = await loop.create_connection(functools.partial(Subscriber, request, recorder, future),
                                                        "127.0.0.1", port)
            transports.append(transport)
            opened.append(future)
        await asyncio.wait_for(asyncio.gather(*opened), 120)
    print("connected", flush=True)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while (command := (await reader.readline()).strip()) not in (b"stop", b""):
        if command == b"start":
            recorder.measuring = True
        elif command == b"probe":
            print(json.dumps({"worst": recorder.worst}), flush=True)
            recorder.worst = 0.0
    recorder.measuring = False
    print(json.dumps({"latencies": recorder.latencies, "frames": len(recorder.latencies)}), flush=True)
    for transport in transports:
        transport.abort()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--workflows", required=True)
    parser.add_argument("--batch", type=int, default=250)
    args = parser.parse_args()
    raise_fd_limit()
    coroutine = run(args.port, args.count, args.first, args.workflows.split(","), args.batch)
    try:
        import uvloop
    except ImportError:
        asyncio.run(coroutine)
    else:
        uvloop.run(coroutine)


if __name__ == "__main__":
    main()
