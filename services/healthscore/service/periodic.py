"""The one shape of every background loop: a step, a pause, again, until stopped.

The outbox relay, the projector, the silence sweep, the gauges, the readiness
checker, the read model's staleness watch and the drain of held-back records
are steps run by `every`; the composition root starts them all in one
`asyncio.TaskGroup`. A step that raises is logged (`<name>_failed`) and run
again after the pause: the loops are the service's, never optional, so none
gives up.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog

log = structlog.get_logger(__name__)

# what a step returns when it has more to do at once
AT_ONCE = 0.0

# a step returns how long to pause before the next one (None: the loop's interval)
Step = Callable[[], Awaitable[float | None]]


async def pause_unless_stopped(stop: asyncio.Event, seconds: float) -> None:
    """Sleep `seconds`, or less if `stop` is set meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


async def every(
    interval: float,
    step: Step,
    stop: asyncio.Event,
    name: str,
    max_backoff: float | None = None,
) -> None:
    """Run `step` until `stop` is set, pausing `interval` (or what the step asks:
    `AT_ONCE` while it has more to do) between steps.

    A failed step is logged as `<name>_failed`; the next one comes after the
    interval, or, with `max_backoff`, after a pause that doubles with each
    failure in a row up to `max_backoff`.
    """
    backoff = interval
    while not stop.is_set():
        try:
            pause = await step()
            backoff = interval
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning(f"{name}_failed", error=type(exc).__name__, message=str(exc)[:300])
            if max_backoff is not None:
                backoff = min(backoff * 2, max_backoff)
            pause = backoff
        if pause is None:
            pause = interval
        if pause > 0:
            await pause_unless_stopped(stop, pause)
