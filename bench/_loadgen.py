"""`python -m bench._loadgen`: a closed-loop HTTP/1.1 load generator in its own process.

    python -m bench._loadgen --url http://127.0.0.1:8080/v1/workflow --body-file F \
        --content-type 'multipart/form-data; boundary=...' --header 'Authorization: Bearer T' \
        --connections 32 --duration 5 --warmup 1

Each keep-alive connection sends the same POST, waits for the whole response, and sends the
next, for `warmup + duration` seconds; only requests sent after the warm-up are counted.
Prints one JSON line: requests, rate (/s), statuses, latency summary (ms), and the
generator's own CPU seconds (to show it was not the bottleneck). asyncio Protocols and a
prebuilt request keep the cost per request to a few microseconds of Python.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import resource
import time
import urllib.parse

from bench._common import summary_ms


class Connection(asyncio.Protocol):
    def __init__(self, request: bytes, counted_after: float, deadline: float, results: list[tuple[int, float]],
                 done: asyncio.Future[None]) -> None:
        self.request = request
        self.counted_after = counted_after
        self.deadline = deadline
        self.results = results
        self.done = done
        self.buffer = bytearray()
        self.sent_at = 0.0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._send()

    def _send(self) -> None:
        assert self.transport is not None
        self.sent_at = time.perf_counter()
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).decode("latin-1")
            length = 0
            for line in head.split("\r\n")[1:]:
                key, _, value = line.partition(":")
                if key.strip().lower() == "content-length":
                    length = int(value.strip())
            if len(self.buffer) < end + 4 + length:
                return
            del self.buffer[: end + 4 + length]
            now = time.perf_counter()
            status = int(head[9:12])
            if self.sent_at >= self.counted_after:
                self.results.append((status, now - self.sent_at))
            if now >= self.deadline:
                assert self.transport is not None
                self.transport.close()
                return
            self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


async def run(url: str, body: bytes, headers: list[str], connections: int, duration: float,
              warmup: float) -> dict[str, object]:
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    head = [f"POST {parts.path or '/'} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {len(body)}", *headers]
    request = ("\r\n".join(head) + "\r\n\r\n").encode() + body
    loop = asyncio.get_running_loop()
    start = time.perf_counter()
    counted_after = start + warmup
    deadline = counted_after + duration
    results: list[tuple[int, float]] = []
    dones = []
    for _ in range(connections):
        done: asyncio.Future[None] = loop.create_future()
        dones.append(done)
        await loop.create_connection(functools.partial(Connection, request, counted_after, deadline, results, done),
                                     host, port)
    await asyncio.wait_for(asyncio.gather(*dones), timeout=warmup + duration + 60)
    elapsed = time.perf_counter() - counted_after
    statuses: dict[str, int] = {}
    for status, _ in results:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    ok = [latency for status, latency in results if 200 <= status < 300]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "requests": len(results), "ok": len(ok), "elapsed_s": round(elapsed, 3),
        "rate": round(len(ok) / elapsed, 1), "statuses": statuses, "latency_ms": summary_ms(ok),
        "loadgen_cpu_s": round(usage.ru_utime + usage.ru_stime, 2), "connections": connections,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--body-file", required=True)
    p.add_argument("--content-type", required=True)
    p.add_argument("--header", action="append", default=[])
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    args = p.parse_args()
    with open(args.body_file, "rb") as f:
        body = f.read()
    headers = [f"Content-Type: {args.content_type}", *args.header]
    print(json.dumps(asyncio.run(run(args.url, body, headers, args.connections, args.duration, args.warmup))))


if __name__ == "__main__":
    main()
