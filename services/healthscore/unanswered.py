"""A check waited for with a bound and left running, not cancelled, when it has no answer.

`asyncio.wait_for` (and `asyncio.timeout`) cancel what times out and then wait for
the cancellation to finish, and a query cancelled on a PostgreSQL that stopped
answering (a frozen host, a path that drops packets) gives its connection back only
once the server answers the cancel request: whoever waited hung with the server
(review 36b). Here the wait ends at the bound whatever the check does; the run goes
on, and whoever asks while it runs waits for that same run instead of starting
another beside it, so a server that does not answer costs one connection, not one per
probe. Both readiness endpoints (the service's /readyz, the API's /api/readyz) use it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class BoundedCheck(Generic[T]):
    """One run of a check at a time, each wait for it at most `timeout` seconds."""

    def __init__(self, timeout: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout = timeout
        self._clock = clock
        self._run: asyncio.Future[T] | None = None
        self._started = 0.0

    async def answer(self, check: Callable[[], Awaitable[T]]) -> asyncio.Future[T] | str:
        """The finished run (its result, exception or cancellation for the caller to
        read), or why there is none: `no answer within 2s`, then, for a run still
        unanswered from an earlier wait, `no answer for N s (limit 2s)`."""
        run = self._run
        if run is None or run.done():
            run = self._run = asyncio.ensure_future(check())
            run.add_done_callback(retrieved)
            self._started = self._clock()
        done, _ = await asyncio.wait({run}, timeout=self.timeout)
        if done:
            return run
        waited = self.unanswered_for
        if waited <= 2 * self.timeout:
            return f"no answer within {self.timeout:g}s"
        return f"no answer for {waited:.0f}s (limit {self.timeout:g}s)"

    @property
    def unanswered_for(self) -> float:
        """How long the run in progress has gone without an answer (0: none runs)."""
        if self._run is None or self._run.done():
            return 0.0
        return self._clock() - self._started

    def close(self) -> None:
        """Cancel a run still waiting for its answer, without waiting for it (the
        process stops, or the run is given up on): the next wait starts another."""
        if self._run is not None and not self._run.done():
            self._run.cancel()
        self._run = None


def retrieved(run: asyncio.Future[T]) -> None:
    """A run that finished after its wait ended without it: its outcome is dropped (the
    next wait starts a run of its own), and an exception it ended with is not an
    unhandled one."""
    if not run.cancelled():
        run.exception()
