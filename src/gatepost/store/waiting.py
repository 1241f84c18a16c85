"""How the router and the send side wait for work without busy-looping.

In-process wake-ups are hints, and so are the store's (`Workers.watch`); a
cheap read-only look at the store every `poll` seconds finds work that another
process added. Knows nothing about mail.
"""

from __future__ import annotations

import asyncio
import time

from .base import Workers

POLL = 0.05  # seconds between read-only looks at the queue when nothing woke us (a
# store that hears of other processes' commits looks less often: its `poll`)


async def idle(
    store: Workers,
    queue: str,
    wakeup: asyncio.Event,
    stop: asyncio.Event,
    limit: float,
) -> bool:
    """Wait at most `limit` seconds for claimable work in `queue`, a wake-up
    hint or a stop; True when there may be work, False when the time ran out."""
    deadline = time.monotonic() + limit
    found = False
    while not (stop.is_set() or found) and time.monotonic() < deadline:
        await wait_any(wakeup, stop, store.poll)
        found = wakeup.is_set() or await store.due(queue)
    wakeup.clear()
    return found


async def wait_any(wakeup: asyncio.Event, stop: asyncio.Event, timeout: float) -> None:
    """Sleep until either event is set or `timeout` seconds pass."""
    waits = [asyncio.ensure_future(wakeup.wait()), asyncio.ensure_future(stop.wait())]
    _, pending = await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
