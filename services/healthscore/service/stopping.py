"""Background loops share one way to pause that a stop request cuts short."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog

log = structlog.get_logger(__name__)


async def pause_unless_stopped(stop: asyncio.Event, seconds: float) -> None:
    """Sleep `seconds`, or less if `stop` is set meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


async def repeat_until_stopped(
    step: Callable[[], Awaitable[bool]],
    stop: asyncio.Event,
    interval: float,
    failure_event: str,
    max_backoff: float = 5.0,
) -> None:
    """Run `step` until `stop`: again at once while it says there is more to do,
    after `interval` when not, backing off (doubling up to `max_backoff`) while it
    fails. Never gives up: the loops it runs are the service's, not optional."""
    backoff = interval
    while not stop.is_set():
        try:
            more = await step()
            backoff = interval
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning(failure_event, error=type(exc).__name__, message=str(exc)[:300])
            more = False
            backoff = min(backoff * 2, max_backoff)
        if not more:
            await pause_unless_stopped(stop, backoff)
