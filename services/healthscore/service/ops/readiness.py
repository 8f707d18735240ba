"""Readiness, checked in the background: /readyz serves the latest result.

A periodic step (`step`, run by `periodic.every`) runs every check, all at
once, and keeps the outcome with the time it finished: a check without an answer
within the timeout is reported so (`no answer within 2s`) and left running, not
waited for (`healthscore.unanswered` says why); a check still running from an
earlier round is not started again: its name is reported with how long it has gone
unanswered, until it finishes. A request reads that outcome (a few dictionary
reads): it never waits on PostgreSQL or the broker, so twenty scrapers and probes
cost no round trips and cannot make one another time out. A result older than
`stale_after` counts as not ready: a checker that stopped finishing rounds is itself
a failure. While not ready it checks again sooner (`retry_interval`), so start-up
and recovery show within half a second instead of a whole interval.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

from healthscore.unanswered import BoundedCheck

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
        # each check's run, left running when it has no answer within the timeout
        self._runs = {name: BoundedCheck[str | None](timeout, clock) for name in self._checks}

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
        run = await self._runs[name].answer(check)
        if isinstance(run, str):
            return run
        if run.cancelled():
            return "cancelled"  # a CancelledError from result() would end the loop
        try:
            problem = run.result()
        except Exception as exc:
            return f"{type(exc).__name__}: {str(exc)[:200]}"
        return "ok" if problem is None else problem

    def close(self) -> None:
        """Cancel the checks still waiting for an answer (the service stops)."""
        for run in self._runs.values():
            run.close()

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
