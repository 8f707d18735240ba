"""Background loops share one way to pause that a stop request cuts short."""

from __future__ import annotations

import asyncio
import contextlib


async def pause_unless_stopped(stop: asyncio.Event, seconds: float) -> None:
    """Sleep `seconds`, or less if `stop` is set meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
