"""Prompts a previous life of this agent left in its ComfyUI, stopped before the first Hello.

An agent that is killed and restarted comes back without its work: the scheduler requeues what
it held, and another runner may start it at once. The killed agent's prompt would still be
running (and its pending ones would still run) in this ComfyUI: the same workflow on two
ComfyUIs at the same time, and the GPU busy with work nobody waits for. So before it says Hello,
a new agent deletes the pending prompts and interrupts the running one that earlier agents sent
(their client_id starts with CLIENT_PREFIX and is not this agent's), and waits, bounded, until
none of them runs. Prompts other clients sent (a person in ComfyUI's own UI) are left alone.
A ComfyUI that cannot be reached has nothing to stop; the session's readiness checks take over.
"""

from __future__ import annotations

import asyncio
import logging
import time

from services.runner.comfyui_client import ComfyUI
from services.runner.errors import ComfyUIError

log = logging.getLogger(__name__)

# Every agent's websocket client_id is CLIENT_PREFIX + a new uuid (server.py).
CLIENT_PREFIX = "comfyfleet-"
STOP_WAIT_S = 30.0  # an interrupt ends a node between steps; a long node may take a while
POLL_S = 0.05


async def stop_orphans(comfyui: ComfyUI, client_id: str, *, wait_s: float = STOP_WAIT_S) -> int:
    """Deletes and interrupts the prompts earlier agents left in `comfyui`; returns how many.
    Returns once none of them runs, or after `wait_s` (logged)."""
    try:
        queue = await comfyui.queue()
    except ComfyUIError as err:
        log.info("ComfyUI not reachable at start (%s): no earlier prompts to stop", err)
        return 0

    def orphan(prompt_id: str) -> bool:
        owner = queue.client_ids.get(prompt_id, "")
        return owner.startswith(CLIENT_PREFIX) and owner != client_id

    pending = [prompt_id for _, prompt_id in queue.pending if orphan(prompt_id)]
    running = [prompt_id for prompt_id in queue.running if orphan(prompt_id)]
    if not pending and not running:
        return 0
    log.warning("stopping %d prompt(s) an earlier agent left in ComfyUI (%d running)",
                len(pending) + len(running), len(running))
    try:
        if pending:  # first, so that none of them starts when the running one stops
            await comfyui.delete_pending(pending)
        for prompt_id in running:
            await comfyui.interrupt(prompt_id)
        deadline = time.monotonic() + wait_s
        while (now := await comfyui.queue()) and any(now.holds(prompt_id) for prompt_id in running + pending):
            if time.monotonic() > deadline:
                log.warning("earlier prompts still in ComfyUI after %.0f s; going on", wait_s)
                break
            await asyncio.sleep(POLL_S)
    except ComfyUIError as err:
        log.warning("could not stop the earlier prompts: %s", err)
    return len(pending) + len(running)
