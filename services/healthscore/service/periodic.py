"""The one shape of every background loop: a step, a pause, again, until stopped.

The outbox relay, the projector, the silence sweep, the gauges, the readiness
checker, the read model's staleness watch and the drain of held-back records
are steps run by `every`; the composition root starts them all in one
`asyncio.TaskGroup`. The relay and the projector are woken by the batches that
give them work (a `wake` event) and poll only as a fallback. A step that raises
is logged (`<name>_failed`) and run again after the pause: the loops are the
service's, never optional, so none gives up.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog

log = structlog.get_logger(__name__)

# what a step returns when it has more to do at once
AT_ONCE = 0.0
# what a woken step returns when another process held the lock its work needs: that
# process may have read the queue before this one's work was committed
LOCK_BUSY_RETRY = 0.05

# a step returns how long to pause before the next one (None: the loop's interval)
Step = Callable[[], Awaitable[float | None]]
# told the loop's name and whether a step failed, after each step
OnStep = Callable[[str, bool], None]
# told the loop's name before each step (a step that never returns is seen begun)
OnBegin = Callable[[str], None]


async def pause_unless_stopped(stop: asyncio.Event, seconds: float) -> None:
    """Sleep `seconds`, or less if `stop` is set meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


async def pause_until_woken(
    stop: asyncio.Event, wake: asyncio.Event, seconds: float, min_pause: float
) -> None:
    """Sleep `min_pause`, then until `seconds` have passed or `wake` is set (or `stop`).
    `wake` is cleared on the way out: what sets it during the next step ends the next
    pause."""
    if min_pause > 0:
        await pause_unless_stopped(stop, min_pause)
        seconds -= min_pause
    if seconds > 0 and not stop.is_set() and not wake.is_set():
        waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wake.wait())]
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
    wake.clear()


async def every(
    interval: float,
    step: Step,
    stop: asyncio.Event,
    name: str,
    max_backoff: float | None = None,
    wake: asyncio.Event | None = None,
    min_pause: float = 0.0,
    on_step: OnStep | None = None,
    on_begin: OnBegin | None = None,
) -> None:
    """Run `step` until `stop` is set, pausing `interval` (or what the step asks:
    `AT_ONCE` while it has more to do) between steps.

    With `wake`, a pause after a step that did not fail ends as soon as `wake` is
    set, but lasts at least `min_pause`: what has work for the step announces it
    instead of the step polling for it, and `interval` is the longest it waits for
    work nobody announced. A failed step is logged as `<name>_failed`; the next one
    comes after the interval, or, with `max_backoff`, after a pause that doubles
    with each failure in a row up to `max_backoff`. `on_step` hears of each step's
    outcome (the metrics: a loop failing quietly is what the logs alone would hide),
    `on_begin` of each step's start (one that hangs never reaches `on_step`).
    """
    backoff = interval
    while not stop.is_set():
        failed = False
        if on_begin is not None:
            on_begin(name)
        try:
            pause = await step()
            backoff = interval
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # an error raised while handling another (a rollback on a connection the
            # server closed) hides the first one: it says what happened
            handled = exc.__context__
            if isinstance(handled, asyncio.CancelledError):
                handled = None  # how asyncio.timeout raises its TimeoutError: nothing more
            during = None if handled is None else f"{type(handled).__name__}: {handled}"[:300]
            error, message = type(exc).__name__, str(exc)[:300]
            log.warning(f"{name}_failed", error=error, message=message, during=during)
            if max_backoff is not None:
                backoff = min(backoff * 2, max_backoff)
            pause = backoff
            failed = True
        if on_step is not None:
            on_step(name, failed)
        if pause is None:
            pause = interval
        if pause > 0:
            if wake is None or failed:
                await pause_unless_stopped(stop, pause)
            else:
                await pause_until_woken(stop, wake, pause, min_pause)
