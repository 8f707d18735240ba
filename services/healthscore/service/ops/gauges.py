"""Gauges that come from state, refreshed periodically: lag, outbox, bands."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

import asyncpg
import structlog

from healthscore.core.partitions import PartitionKey
from healthscore.service.kafka_clients import KafkaConnection
from healthscore.service.ops.lag import HighWatermarkProbe
from healthscore.service.ops.metrics import Metrics
from healthscore.store import sql
from healthscore.store.offsets import stored_offsets
from healthscore.unanswered import BoundedCheck, retrieved

log = structlog.get_logger(__name__)

# The lag's round trips to the brokers, bounded: a broker that hangs, or is gone (the
# client retries its metadata until its 40 s request timeout), must not hold the
# PostgreSQL gauges still with it; a broker outage is when the outbox backs up
LAG_REFRESH_TIMEOUT_SECONDS = 10.0
# a lag refresh still without an answer after this long (past the client's own 40 s
# request timeout) is given up on, and its probe closed: the next opens another
LAG_REFRESH_ABANDONED_AFTER_SECONDS = 60.0

BAND_NAMES = ("excellent", "good", "at_risk", "critical")
RISK_NAMES = ("low", "medium", "high", "critical")

# partitions whose stored next offset is above the high watermark a fetch confirmed:
# (stored next offset, high watermark)
BeyondTheLog = Callable[[Mapping[PartitionKey, tuple[int, int]]], None]


class LagNotRefreshed(Exception):
    """The high watermarks could not be read in time (logged as gauge_refresh_failed)."""


class GaugeRefresher:
    def __init__(
        self,
        pool: asyncpg.Pool[Any],
        metrics: Metrics,
        kafka: KafkaConnection,
        group: str,
        topics: list[str],
        distribution_interval: float = 60.0,
        on_beyond_the_log: BeyondTheLog | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pool = pool
        self._metrics = metrics
        self._kafka = kafka
        self._group = group
        self._topics = topics
        self.last_lag: dict[PartitionKey, int] = {}
        # a partition with records to consume: its stored offset, and since when (the
        # clock) it has not moved; a consumer that stops fetching one partition while
        # the others go on shows nowhere else (review 36b: ready, nothing logged)
        self._still: dict[PartitionKey, tuple[int, float]] = {}
        self._clock = clock
        # the band and risk counts read all of customer_health: on their own, slower interval
        self._distribution_interval = distribution_interval
        self._distribution_due = 0.0
        # one probe consumer kept between refreshes, opened again after a failure
        self._probe: HighWatermarkProbe | None = None
        # the lag's refresh, waited for at most its bound and not cancelled past it: a
        # cancelled wait for a broker gone may itself wait (CI: the outbox gauges stood
        # still for 30 s after a broker's kill, no refresh failure counted)
        self._lag_run = BoundedCheck[None](LAG_REFRESH_TIMEOUT_SECONDS)
        # a topic recreated under the running service: its lag reads 0 and the
        # consumer waits past the new log's end, so the refresher, which sees both
        # offsets every few seconds, reports it (the consumer refuses the partition)
        self._on_beyond_the_log = on_beyond_the_log

    async def refresh_lag(self, probe: HighWatermarkProbe) -> None:
        partitions = await probe.partitions(self._topics)
        # the stored offsets first: a batch committing before the high watermarks are
        # read can then only make the lag look larger, never put a stored offset above
        # a high watermark (only a recreated or truncated log does)
        async with self._pool.acquire() as conn:
            stored = await stored_offsets(conn, self._group)
        fetched, reported = await probe.fetched_high_watermarks(partitions)
        beyond: dict[PartitionKey, tuple[int, int]] = {}
        now = self._clock()
        for tp, high in {**reported, **fetched}.items():
            lag = max(0, high - stored.get(tp, 0))
            self.last_lag[tp] = lag
            self._metrics.consumer_lag.labels(tp[0], str(tp[1])).set(lag)
            self._metrics.partition_stalled.labels(tp[0], str(tp[1])).set(
                self._stalled_for(tp, stored.get(tp, 0), lag, now)
            )
            # only a high watermark a fetch confirmed: ListOffsets can answer low
            if tp in fetched and stored.get(tp, 0) > high:
                beyond[tp] = (stored[tp], high)
        if beyond and self._on_beyond_the_log is not None:
            self._on_beyond_the_log(beyond)

    def _stalled_for(self, tp: PartitionKey, stored: int, lag: int, now: float) -> float:
        """Seconds `tp` has had records to consume without its stored offset moving."""
        if lag <= 0:
            self._still.pop(tp, None)
            return 0.0
        seen = self._still.get(tp)
        if seen is None or seen[0] != stored:
            self._still[tp] = (stored, now)
            return 0.0
        return now - seen[1]

    async def refresh_outbox(self) -> None:
        async with self._pool.acquire() as conn:
            outbox = await conn.fetchrow(sql.OUTBOX_STATS)
            dead = await conn.fetchrow(sql.DEAD_LETTER_STATS, sql.DEAD_LETTERS_COUNTED)
            notify = await conn.fetchval(sql.NOTIFICATION_QUEUE_USAGE)
            withheld = await conn.fetchval(sql.DEAD_LETTERS_WITHHELD_KEPT, sql.DEAD_LETTERS_COUNTED)
        assert outbox is not None and dead is not None
        self._metrics.notification_queue_usage.set(notify)
        self._metrics.dead_letters_withheld_kept.set(withheld)
        self._metrics.outbox_backlog.set(outbox["backlog"])
        self._metrics.outbox_oldest_age.set(outbox["oldest_age"])
        self._metrics.dead_letters_pending.set(dead["pending"])
        self._metrics.dead_letters_oldest_age.set(dead["oldest_age"])

    async def refresh_distribution(self) -> None:
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(sql.DISTRIBUTION)
        bands: dict[str, int] = {}
        risks: dict[str, int] = {}
        for row in rows:
            bands[row["health_status"]] = bands.get(row["health_status"], 0) + row["n"]
            risks[row["risk_level"]] = risks.get(row["risk_level"], 0) + row["n"]
        for band in BAND_NAMES:
            self._metrics.organizations_by_band.labels(band).set(bands.get(band, 0))
        for level in RISK_NAMES:
            self._metrics.organizations_by_risk.labels(level).set(risks.get(level, 0))

    async def refresh(self) -> None:
        """Outbox and dead letters, the band and risk counts when their interval is due,
        then the lag (a periodic step). Each source on its own: the PostgreSQL gauges
        are refreshed whatever the brokers do, and a failure of either is raised after
        both were tried. A lag failure closes the probe: the next refresh opens another."""
        failures: list[Exception] = []
        try:
            await self.refresh_outbox()
            if time.monotonic() >= self._distribution_due:
                await self.refresh_distribution()
                self._distribution_due = time.monotonic() + self._distribution_interval
        except Exception as exc:
            failures.append(exc)
        run = await self._lag_run.answer(self._refresh_lag)
        if isinstance(run, str):  # still running: the next refresh waits for it again
            if self._lag_run.unanswered_for > LAG_REFRESH_ABANDONED_AFTER_SECONDS:
                self._lag_run.close()
                await self._close_probe()
            failures.append(
                LagNotRefreshed(
                    f"the brokers did not answer within {LAG_REFRESH_TIMEOUT_SECONDS:g}s: "
                    f"consumer lag not refreshed ({run})"
                )
            )
        elif run.cancelled() or run.exception() is not None:
            await self._close_probe()
            error = None if run.cancelled() else run.exception()
            failures.append(
                error if isinstance(error, Exception) else LagNotRefreshed("lag refresh cancelled")
            )
        if failures:
            raise failures[0]

    async def _refresh_lag(self) -> None:
        if self._probe is None:
            probe = HighWatermarkProbe(self._kafka)
            await probe.__aenter__()
            self._probe = probe
        await self.refresh_lag(self._probe)

    async def _close_probe(self) -> None:
        """Close the probe (the next refresh opens another), waiting for that at most
        the lag's bound: a close left running ends on its own."""
        probe, self._probe = self._probe, None
        if probe is not None:
            closing = asyncio.ensure_future(probe.__aexit__(None, None, None))
            closing.add_done_callback(retrieved)
            await asyncio.wait({closing}, timeout=LAG_REFRESH_TIMEOUT_SECONDS)

    async def close(self) -> None:
        """At a stop: the lag's refresh still running is cancelled, the probe closed."""
        self._lag_run.close()
        await self._close_probe()
