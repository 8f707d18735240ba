"""Promotion: the read model follows the live model version without a replay.

When the service starts with another model (MODEL_PATH) than the one the read
model was written with, `customer_health.score_model_version` says which
organizations are still shown under the old one. This loop queues them for the
projector a page at a time (`store.promotion.QUEUE_OTHER_VERSION`, only while
the projector's queue is shorter than a page); the projector scores each at its
stored state with the live model (`projector.project`), writes the row with the
live version and publishes it on the health feed. Consumption never stops:
organizations that receive events meanwhile are projected by the live model
anyway. `healthscore_organizations_on_other_model_version` counts what is left.

What a promotion does not change: the stored state (the aggregates, the daily
scores the 7- and 30-day changes are taken against, the alert episode state)
stays as the previous model left it; `healthscore replay` recomputes history
under the new version. During a rolling deploy the processes of the two
versions re-project each other's organizations until the old ones stop.
"""

from __future__ import annotations

import time
from typing import Any

import asyncpg
import structlog

from healthscore.service.ops.metrics import Metrics
from healthscore.store import promotion

log = structlog.get_logger(__name__)


class Promotion:
    def __init__(
        self,
        pool: asyncpg.Pool[Any],
        live_version: str,
        metrics: Metrics | None = None,
        page_size: int = 500,
        count_interval: float = 60.0,
    ) -> None:
        self._pool = pool
        self._version = live_version
        self._metrics = metrics
        self._page = page_size
        # organizations on another version at the latest count (None: not counted yet)
        self.remaining: int | None = None
        self.queued = 0
        self._count_interval = count_interval
        self._count_due = 0.0

    async def count(self) -> int:
        async with self._pool.acquire() as conn:
            remaining = int(await conn.fetchval(promotion.COUNT_OTHER_VERSION, self._version))
        self.remaining = remaining
        if self._metrics is not None:
            self._metrics.organizations_on_other_model.set(remaining)
        return remaining

    async def queue_page(self) -> int:
        """Queue one page of organizations on another version; how many were queued."""
        async with self._pool.acquire() as conn:
            status = await conn.execute(promotion.QUEUE_OTHER_VERSION, self._version, self._page)
        queued = int(status.split()[-1])
        self.queued += queued
        return queued

    async def step(self) -> float | None:
        """Queue a page while organizations on another version are left; count them
        every `count_interval` (the count reads all of customer_health) and when a
        page queues nothing. Once none is left the loop only counts."""
        due = time.monotonic() >= self._count_due
        if self.remaining != 0:
            queued = await self.queue_page()
            if queued:
                log.info("promotion_queued", organizations=queued, remaining=self.remaining)
            due = due or queued == 0
        if due or self.remaining is None:
            await self.count()
            self._count_due = time.monotonic() + self._count_interval
        return None
