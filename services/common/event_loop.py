"""The event loop every service runs on: uvloop (requirements.txt), the gateway's loop too.

grpc.aio runs on it as on asyncio's own loop, and the loop's own work per callback, timer and
socket event (a large share of a service's CPU when it handles many small messages) is C
instead of Python: in `bench.compare`, one workflow through the whole suite at a time, the
scheduler's CPU per workflow went down by ~7% with it.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, TypeVar

import uvloop

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)`, on uvloop."""
    return uvloop.run(main)
