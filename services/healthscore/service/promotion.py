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

A model whose signal half-lives or weights differ from the one promoted from
reads decayed sums built under the old settings: every service records the
settings of the version it serves (`score_models`, `record_model`), and the
promotion logs `promotion_aggregates_differ` for each version it promotes from
whose settings differ (`promotion_aggregates_unknown` when they were never
recorded and no shipped model has that version).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import asyncpg
import orjson
import structlog

from healthscore.core.quality import aggregate_settings, settings_differ
from healthscore.core.scoring.model import ScoreModel, shipped_models
from healthscore.service.ops.metrics import Metrics
from healthscore.store import promotion

log = structlog.get_logger(__name__)


async def record_model(pool: asyncpg.Pool[Any], model: ScoreModel) -> list[str]:
    """Record the live model's aggregate settings under its version (once per version);
    return the settings another process recorded otherwise for the same version (a
    model file changed without a new version: logged, `model_version_reused`)."""
    settings = aggregate_settings(model)
    async with pool.acquire() as conn:
        await conn.execute(promotion.RECORD_MODEL, model.version, orjson.dumps(settings).decode())
        recorded = await conn.fetchval(promotion.RECORDED_MODEL, model.version)
    differ = settings_differ(orjson.loads(recorded), settings)
    if differ:
        log.warning("model_version_reused", version=model.version, settings=differ)
    return differ


# a page that met an organization erased meanwhile is queued again
PAGE_ATTEMPTS = 3


class Promotion:
    def __init__(
        self,
        pool: asyncpg.Pool[Any],
        live_version: str,
        metrics: Metrics | None = None,
        page_size: int = 500,
        count_interval: float = 60.0,
        live_aggregates: Mapping[str, Any] | None = None,
    ) -> None:
        self._pool = pool
        self._version = live_version
        # the live model's aggregate settings (None: not compared)
        self._aggregates = live_aggregates
        self._compared = False
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
        for attempt in range(1, PAGE_ATTEMPTS + 1):
            try:
                async with self._pool.acquire() as conn:
                    status = await conn.execute(
                        promotion.QUEUE_OTHER_VERSION, self._version, self._page
                    )
                break
            except asyncpg.ForeignKeyViolationError:
                # an organization of the page was erased while the statement ran (it
                # takes no row locks): run it again, without it
                if attempt == PAGE_ATTEMPTS:
                    raise
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
        if self.remaining and not self._compared and self._aggregates is not None:
            await self.compare_aggregates()
            self._compared = True
        return None

    async def compare_aggregates(self) -> dict[str, list[str] | None]:
        """The aggregate settings that differ between the live model and each version the
        read model still shows (None: unknown), each logged."""
        assert self._aggregates is not None
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(promotion.PROMOTED_FROM, self._version)
        compared: dict[str, list[str] | None] = {}
        for row in rows:
            version = row["version"]
            shipped = shipped_models().get(version)
            if row["aggregates"] is not None:
                recorded: Mapping[str, Any] | None = orjson.loads(row["aggregates"])
            else:
                recorded = None if shipped is None else aggregate_settings(shipped)
            if recorded is None:
                compared[version] = None
                log.warning(
                    "promotion_aggregates_unknown", from_version=version, live_version=self._version
                )
                continue
            compared[version] = differ = settings_differ(recorded, self._aggregates)
            if differ:
                # the stored decayed sums were built under the old settings
                log.warning(
                    "promotion_aggregates_differ",
                    from_version=version,
                    live_version=self._version,
                    settings=differ,
                    fix="healthscore replay recomputes them under the live model",
                )
        return compared
