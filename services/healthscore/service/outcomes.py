"""Live alert outcomes: every alert decision labelled retained or churned, and the
precision and lead time of live alerts on /metrics.

A periodic step (off the event path): one set-based statement labels every
decision in `alert_outbox` with its episode's outcome (`alert_outcomes`), from
the churns the service knows (the support stream's interactions whose outcome is
`churned`, and the labels `healthscore import --labels` brought), with the
offline evaluation's definitions (`healthscore.core.quality`); a second computes
the figures the gauges show. One labeller at a time across processes (an
advisory lock); every process reads the figures for its own /metrics, and the
labeller writes them, beside its model's backtest, into the one row the
dashboard shows admins (`score_quality_summary`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson
import structlog

from healthscore.core.quality import ALERT_HORIZON_DAYS, backtest
from healthscore.core.scoring.model import DAY, ScoreModel
from healthscore.service.ops.metrics import Metrics
from healthscore.service.sweep import FindUnread, event_time_watermark
from healthscore.store import Connection, locks, quality, sql

log = structlog.get_logger(__name__)

HORIZON_SECONDS = ALERT_HORIZON_DAYS * DAY
PERCENTILES = ("25", "50", "75")


@dataclass(frozen=True, slots=True)
class OutcomeFigures:
    churned: int
    retained: int
    pending: int
    churners: int
    churners_alerted: int
    lead_days_quartiles: tuple[float, float, float] | None

    @property
    def precision(self) -> float | None:
        labelled = self.churned + self.retained
        return self.churned / labelled if labelled else None


async def label_outcomes(conn: Connection, watermark: datetime | None) -> int:
    """Label (or relabel) the decisions whose outcome is new or changed; how many.
    `watermark`: how far the input streams have been read (None: not known yet)."""
    status = await conn.execute(quality.LABEL_ALERT_OUTCOMES, watermark, HORIZON_SECONDS)
    return int(status.split()[-1])


async def outcome_figures(conn: Connection) -> OutcomeFigures:
    row = await conn.fetchrow(quality.OUTCOME_FIGURES, HORIZON_SECONDS)
    assert row is not None
    quartiles = row["lead_days_quartiles"]
    return OutcomeFigures(
        churned=row["churned"],
        retained=row["retained"],
        pending=row["pending"],
        churners=row["churners"],
        churners_alerted=row["churners_alerted"],
        lead_days_quartiles=None if quartiles is None else tuple(quartiles),
    )


class OutcomeLabeller:
    def __init__(
        self,
        pool: asyncpg.Pool[Any],
        metrics: Metrics,
        group: str,
        topics: Sequence[str],
        model: ScoreModel,
        unread: FindUnread | None = None,
    ) -> None:
        self._pool = pool
        self._metrics = metrics
        self._group = group
        self._topics = list(topics)
        # the input partitions whose log holds records none of which is applied yet: the
        # watermark is not known while there is one (a support partition not read yet
        # may hold the churn that labels an episode)
        self._unread = unread
        # its backtest goes into the dashboard's summary beside the live figures
        self._backtest = orjson.dumps(backtest(model)).decode()
        self._model_version = model.version
        self.latest: OutcomeFigures | None = None

    async def step(self) -> None:
        """Label what is new, then refresh the gauges (a periodic step); the labeller
        also rewrites the dashboard's summary (`score_quality_summary`)."""
        async with self._pool.acquire() as conn:
            frontiers = await conn.fetch(sql.EVENT_TIME_FRONTIERS, self._group, self._topics)
        # as the sweep's: the connection back in the pool before the brokers are asked
        watermark = await event_time_watermark(frontiers, self._unread, for_sweep=False)
        async with self._pool.acquire() as conn:
            async with conn.transaction():
                labelled = None
                figures = None
                if await conn.fetchval(sql.TRY_LEADER_LOCK, locks.OUTCOMES):
                    labelled = await label_outcomes(conn, watermark)
                    figures = await outcome_figures(conn)
                    await conn.execute(
                        quality.SAVE_SCORE_QUALITY_SUMMARY,
                        self._model_version,
                        self._backtest,
                        figures.churned,
                        figures.retained,
                        figures.pending,
                        figures.churners,
                        figures.churners_alerted,
                        None
                        if figures.lead_days_quartiles is None
                        else list(figures.lead_days_quartiles),
                    )
            if figures is None:
                figures = await outcome_figures(conn)
        if labelled:
            log.info("alert_outcomes_labelled", decisions=labelled)
        self.latest = figures
        self.publish(figures)

    def publish(self, figures: OutcomeFigures) -> None:
        m = self._metrics
        m.alert_episodes.labels("churned").set(figures.churned)
        m.alert_episodes.labels("retained").set(figures.retained)
        m.alert_episodes.labels("pending").set(figures.pending)
        precision = figures.precision
        m.alert_precision.set(math.nan if precision is None else precision)
        m.churned_organizations.set(figures.churners)
        m.churned_organizations_alerted.set(figures.churners_alerted)
        quartiles = figures.lead_days_quartiles or (math.nan, math.nan, math.nan)
        for name, days in zip(PERCENTILES, quartiles, strict=True):
            m.alert_lead_time.labels(name).set(days * DAY)
