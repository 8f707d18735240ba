"""Silence is a signal: rescore organizations that stopped sending events.

The sweep's clock is the event-time watermark (the newest event time the
service committed, capped by the wall clock), not the wall clock alone: if
every producer stops at once, that is an outage upstream, not thousands of
customers going quiet, and the watermark freezes instead of raising an
alert storm. One sweeper at a time across processes: a transaction-level
advisory lock; rows are taken with SKIP LOCKED so a sweep never waits on a
consumer's batch.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import structlog

from healthscore.ingest.effects import compute_silence_effects
from healthscore.scoring.model import ScoreModel
from healthscore.scoring.state import OrganizationState, decode_state
from healthscore.stopping import pause_unless_stopped
from healthscore.store import sql
from healthscore.store.effects_writer import write_effects

log = structlog.get_logger(__name__)

SWEEP_LOCK_KEY = 0x6865616C7468_03


class SilenceSweep:
    def __init__(
        self,
        pool: asyncpg.Pool[Any],
        model: ScoreModel,
        consumer_group: str,
        rescore_step_seconds: float,
        page_size: int = 1000,
        on_run: Callable[[float, list[str]], None] | None = None,
    ) -> None:
        self._pool = pool
        self._model = model
        self._group = consumer_group
        self._step = rescore_step_seconds
        self._page = page_size
        self._on_run = on_run
        self.runs = 0
        self.last_alerts = 0

    async def run_once(self, as_of: datetime | None = None) -> int:
        """Rescore one page of due organizations; return how many."""
        started = time.perf_counter()
        async with self._pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval(sql.TRY_LEADER_LOCK, SWEEP_LOCK_KEY):
                return 0
            if as_of is None:
                watermark = await conn.fetchval(sql.EVENT_TIME_WATERMARK, self._group)
                if watermark is None:
                    return 0
                as_of = min(watermark, datetime.now(UTC))
            rows = await conn.fetch(sql.PICK_SILENT, as_of, self._page)
            states: dict[str, OrganizationState] = {}
            for row in rows:
                if row["state"] != "null":
                    states[str(row["organization_id"])] = decode_state(row["state"])
            if not states:
                return 0
            effects = compute_silence_effects(states, as_of.timestamp(), self._model)
            await write_effects(conn, effects, self._model, self._step)
        self.runs += 1
        if self._on_run is not None:
            kinds = [str(alert.decision.kind) for alert in effects.alerts]
            self._on_run(time.perf_counter() - started, kinds)
        self.last_alerts = len(effects.alerts)
        log.info(
            "silence_sweep",
            organizations=len(states),
            alerts=len(effects.alerts),
            as_of=as_of.isoformat(),
        )
        return len(states)

    async def purge_processed_events(self, retention_days: int, page: int = 50_000) -> int:
        """Forget event ids older than the dedupe window (wall clock of processing)."""
        cutoff = datetime.now(UTC) - timedelta(days=retention_days)
        total = 0
        while True:
            async with self._pool.acquire() as conn:
                status = await conn.execute(sql.PURGE_PROCESSED_EVENTS, cutoff, page)
            deleted = int(status.split()[-1])
            total += deleted
            if deleted < page:
                return total

    async def run(
        self, interval: float, stop: asyncio.Event, dedupe_retention_days: int | None = None
    ) -> None:
        while not stop.is_set():
            try:
                while await self.run_once() >= self._page:
                    pass  # a full page: more are due
                if dedupe_retention_days is not None:
                    await self.purge_processed_events(dedupe_retention_days)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("sweep_failed", error=type(exc).__name__, message=str(exc)[:300])
            await pause_unless_stopped(stop, interval)
