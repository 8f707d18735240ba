"""Readiness, checked in the background: /readyz serves the latest result.

A periodic step (`step`, run by `periodic.every`) runs every check, all at
once, and keeps the outcome with the time it finished: a check without an answer
within the timeout is reported so (`no answer within 2s`) and left running, not
waited for. Cancelling it and waiting for the cancellation to finish is what
`asyncio.wait_for` does, and a query cancelled on a PostgreSQL that stopped
answering (a frozen host, a path that drops packets) gives its connection back only
once the server answers the cancel request: the round never finished, and /readyz
said only that the checker was stuck, with `postgres: ok` from the round before
(review 36b). A check still running from an earlier round is not started again:
its name is reported with how long it has gone unanswered, until it finishes. A request reads
that outcome (a few dictionary reads): it never waits on PostgreSQL or the
broker, so twenty scrapers and probes cost no round trips and cannot make one
another time out. A result older than `stale_after` counts as not ready: a
checker that stopped finishing rounds is itself a failure. While not ready it
checks again sooner (`retry_interval`), so start-up and recovery show within
half a second instead of a whole interval.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

log = structlog.get_logger(__name__)

Check = Callable[[], Awaitable[str | None]]  # None = ok, else why not
Clock = Callable[[], float]

# the name /readyz reports when there is no fresh result to serve
CHECKER = "checker"


@dataclass(frozen=True, slots=True)
class ReadinessResult:
    """One round of checks: each check's "ok" or why not, and when it finished."""

    checks: dict[str, str]
    finished: float  # the checker's clock (monotonic)
    finished_at: datetime  # wall clock, for the response body

    @property
    def failed(self) -> list[str]:
        return [name for name, outcome in self.checks.items() if outcome != "ok"]


class ReadinessChecker:
    def __init__(
        self,
        checks: Mapping[str, Check],
        interval: float,
        timeout: float,
        stale_after: float | None = None,
        retry_interval: float | None = None,
        clock: Clock = time.monotonic,
        notes: Callable[[], dict[str, Any]] | None = None,
        on_result: Callable[[ReadinessResult], None] | None = None,
    ) -> None:
        if interval <= 0 or timeout <= 0:
            raise ValueError("interval and timeout must be positive")
        # O(1) facts shown beside the checks in /readyz
        self._notes = notes
        # hears every round's result (the metrics)
        self._on_result = on_result
        self._checks = dict(checks)
        self.interval = interval
        self.timeout = timeout
        # a healthy checker finishes a round at most every interval + timeout
        self.stale_after = stale_after if stale_after is not None else 3 * interval + timeout
        self.retry_interval = retry_interval if retry_interval is not None else min(interval, 0.5)
        self._clock = clock
        self.latest: ReadinessResult | None = None
        self.rounds = 0
        # a check's run that had not answered when its round ended, and when it began
        self._unanswered: dict[str, tuple[asyncio.Task[str | None], float]] = {}

    async def check_once(self) -> ReadinessResult:
        """Run every check concurrently; store and return the result."""
        outcomes = await asyncio.gather(
            *(self._run(name, check) for name, check in self._checks.items())
        )
        result = ReadinessResult(
            checks=dict(zip(self._checks, outcomes, strict=True)),
            finished=self._clock(),
            finished_at=datetime.now(UTC),
        )
        previous = self.latest
        self.latest = result
        self.rounds += 1
        if previous is None or previous.failed != result.failed:
            log.info("readiness_changed", ready=not result.failed, checks=result.checks)
        if self._on_result is not None:
            self._on_result(result)
        return result

    async def _run(self, name: str, check: Check) -> str:
        earlier = self._unanswered.pop(name, None)
        if earlier is not None and not earlier[0].done():
            task, started = earlier
        else:
            task, started = asyncio.ensure_future(check()), self._clock()
            task.add_done_callback(_retrieved)
        # kept before the wait: a round cancelled in it (the service stops) leaves the
        # check to `close`
        self._unanswered[name] = (task, started)
        done, _ = await asyncio.wait({task}, timeout=self.timeout)
        if done:
            del self._unanswered[name]
        else:
            waited = self._clock() - started
            if waited <= 2 * self.timeout:
                return f"no answer within {self.timeout:g}s"
            return f"no answer for {waited:.0f}s (limit {self.timeout:g}s)"
        if task.cancelled():
            return "cancelled"  # a CancelledError from result() would end the loop
        try:
            problem = task.result()
        except Exception as exc:
            return f"{type(exc).__name__}: {str(exc)[:200]}"
        return "ok" if problem is None else problem

    def close(self) -> None:
        """Cancel the checks still waiting for an answer (the service stops)."""
        for task, _ in self._unanswered.values():
            task.cancel()
        self._unanswered.clear()

    async def step(self) -> float | None:
        """One round (a periodic step, every `interval`); while not ready the next
        comes after `retry_interval`, so start-up and recovery show sooner."""
        ready = not (await self.check_once()).failed
        return None if ready else self.retry_interval

    def status(self) -> tuple[int, dict[str, Any]]:
        """The HTTP status and body /readyz answers: O(1), no I/O."""
        result = self.latest
        if result is None:
            return 503, {
                "status": "not ready",
                "checks": {CHECKER: "no readiness check has finished yet"},
                "failed": [CHECKER],
            }
        age = max(0.0, self._clock() - result.finished)
        checks = dict(result.checks)
        failed = result.failed
        if age > self.stale_after:
            checks[CHECKER] = (
                f"the latest result is {age:.1f}s old (limit {self.stale_after:g}s): "
                "the readiness checker is stuck"
            )
            failed = [*failed, CHECKER]
        body: dict[str, Any] = {
            "status": "not ready" if failed else "ready",
            "checks": checks,
            "failed": failed,
            "checked_at": result.finished_at.isoformat(),
            "age_seconds": round(age, 3),
        }
        if self._notes is not None:
            # what an operator should know that does not make the service unready
            body["notes"] = self._notes()
        return (503 if failed else 200), body


def _retrieved(task: asyncio.Task[str | None]) -> None:
    """A check that finished after its round was reported without it: its outcome is
    the next round's, and an exception it ended with is not an unhandled one."""
    if not task.cancelled():
        task.exception()
