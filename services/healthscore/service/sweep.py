"""Silence is a signal: rescore organizations that stopped sending events.

Silence rescorings are a function of the log, so that a replay makes the
same ones as the live run, whatever the timing of either. An organization is
rescored at every point of its fixed event-time grid (every
SILENCE_RESCORE_AFTER_SECONDS, at a phase set by its id, so that silent
organizations do not all fall due at once) that lies at least one step after
its newest event, as of that point (`ingest.effects.silence_rescore_times`):

- before a batch applies an organization's event, it rescores the grid
  points the organization went through in silence (`BatchPipeline`);
- this sweep rescores the grid points that lie strictly below the log's
  watermark for organizations that have sent nothing since.

The watermark is the oldest of the input partitions' newest applied event
times (stored with the offsets, in the batch's transaction). A partition is
read in order, so for a log whose partitions are in event-time order no event
older than the watermark is still to come: a rescoring the sweep makes can
never precede an older event of that organization, and an event that comes
later would have been preceded by exactly the same rescorings in a batch.
The wall clock decides only when, never which: when a producer stops, its partitions hold the
watermark back (an upstream outage, not customers going quiet) and the sweep
waits instead of raising an alert storm. A partition that has stored no progress
yet holds it back too while its log holds records (its replica is starting or
slow, and those records may be older than the others' events); one whose log is
empty does not (what it receives later is sent later).

A producer may still send one organization's events far behind its partition's
others (a backfill of its history, a client's queue flushed after days offline): the
watermark is then past events of it still to come, and between two of its batches the
organization looked weeks silent, was rescored in silence up to the watermark and got
alerts that the rest of its history then recovered (and that a replay, applying that
history at once, does not make). So the sweep leaves alone an organization a batch
applied events to within `settle_seconds` (SILENCE_SETTLE_SECONDS, processing time:
`organization_state.events_applied_at`). Deferring a rescoring changes no result, only
when it is made: a batch makes the same rescorings before the organization's next
event, and `drain` (the end of a replay) takes every organization due. A backfill that
pauses longer than that between two records of the organization is still judged
silent meanwhile.

One sweeper at a time across processes: a transaction-level advisory lock;
rows are taken with SKIP LOCKED so a sweep never waits on a consumer's batch
(the batch makes any rescorings due before its events itself).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
import structlog

from healthscore.core.effects import (
    BatchEffects,
    compute_silence_effects,
    next_silence_rescore,
)
from healthscore.core.partitions import PartitionKey
from healthscore.core.scoring.model import ScoreModel
from healthscore.core.scoring.state import OrganizationState
from healthscore.service.periodic import AT_ONCE
from healthscore.store import locks, sql
from healthscore.store.effects_writer import write_effects
from healthscore.store.records import to_datetime
from healthscore.store.states import rescored_states, save_locked_states, stored_states

log = structlog.get_logger(__name__)


# the input partitions without stored progress whose log holds records, given those
# with stored progress (`ops.lag.UnreadPartitions`)
FindUnread = Callable[[frozenset[PartitionKey]], Awaitable[list[PartitionKey]]]


async def event_time_watermark(
    frontiers: Sequence[asyncpg.Record],
    unread: FindUnread | None = None,
    for_sweep: bool = True,
) -> datetime | None:
    """The log's watermark from the partitions' stored frontiers (EVENT_TIME_FRONTIERS):
    None before any event was applied, and while a partition that has records has not
    applied one (`unread`; logged for the sweep or, `for_sweep` False, the outcome
    labeller)."""
    times = [row["max_event_time"] for row in frontiers if row["max_event_time"] is not None]
    if not times:
        return None
    if unread is not None:
        behind = await unread(frozenset((row["topic"], row["partition"]) for row in frontiers))
        if behind:
            log.info(
                "silence_sweep_waits" if for_sweep else "alert_outcomes_wait",
                unread_partitions=[f"{topic}:{partition}" for topic, partition in behind],
            )
            return None
    value: datetime = min(times)
    return value


SWEEP_BUDGET = 20_000
"""Silence rescorings one sweep transaction makes at most: what it holds until it
commits, and how long it keeps its organizations' rows."""

PURGE_INTERVAL_SECONDS = 60.0
"""The event ids' purge runs at least this often while the sweep's pages are full."""


SWEEP_SLICE = 1_000
"""Silence rescorings the sweep computes between two yields of the event loop: the
consumer's batches, heartbeats and the ops endpoints share the loop."""


class SilenceSweep:
    def __init__(
        self,
        pool: asyncpg.Pool[Any],
        model: ScoreModel,
        consumer_group: str,
        rescore_step_seconds: float,
        *,
        topics: Sequence[str],
        page_size: int = 1000,
        on_run: Callable[[float, list[str]], None] | None = None,
        dedupe_retention_days: int | None = None,
        unread: FindUnread | None = None,
        on_purge: Callable[[int], None] | None = None,
        history_retention_days: int | None = None,
        on_history_purge: Callable[[int], None] | None = None,
        settle_seconds: float = 0.0,
    ) -> None:
        self._pool = pool
        self._model = model
        self._group = consumer_group
        self._topics = list(topics)
        self._step = rescore_step_seconds
        self._page = page_size
        self._on_run = on_run
        # `step` also forgets event ids older than this (the dedupe window)
        self._dedupe_retention_days = dedupe_retention_days
        self._on_purge = on_purge
        self._purged_at: float | None = None  # monotonic; None: not yet in this process
        self.oldest_event_id_at: datetime | None = None  # as of the last purge
        # `step` also deletes the score history's days older than this, once a UTC day
        self._history_retention_days = history_retention_days
        self._on_history_purge = on_history_purge
        # the cutoff of the last pass that finished: the next is due when the day turns
        self._history_purged_before: date | None = None
        self._unread = unread
        # an organization a batch applied events to this recently is not taken: its
        # events are still arriving (a backfill behind the watermark), module doc
        self._settle = settle_seconds
        self.runs = 0
        self.rescorings = 0
        self.last_alerts = 0

    async def run_once(
        self, watermark: datetime | None = None, settle_seconds: float | None = None
    ) -> int:
        """Rescore one page of due organizations up to the log's watermark; return how many.

        `watermark` overrides the log's (tests and tools), `settle_seconds` the sweep's
        (0: take organizations whatever a batch applied lately). Returns the number of
        organizations taken, 0 when none is due or another process sweeps.
        """
        settle = self._settle if settle_seconds is None else settle_seconds
        started = time.perf_counter()
        if watermark is None:
            # before the transaction: asking the brokers about unread partitions takes
            # a while, and a watermark read earlier is only lower (it never falls)
            watermark = await self.watermark()
            if watermark is None:
                return 0
        async with self._pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval(sql.TRY_LEADER_LOCK, locks.SWEEP):
                return 0
            rows = await conn.fetch(sql.PICK_SILENT, watermark, self._page, settle)
            if not rows:
                return 0
            states, versions = stored_states(rows)
            effects = await self._rescore(states, watermark.timestamp())
            if effects.rescored:
                await save_locked_states(conn, rescored_states(effects), versions, self._step)
                await write_effects(conn, effects, self._model)
            # taken but nothing due after all (a due time stored under another step)
            stale = [str(r["organization_id"]) for r in rows]
            stale = [org for org in stale if org not in effects.rescored]
            if stale:
                await conn.execute(
                    sql.SET_RESCORE_DUE,
                    [UUID(org) for org in stale],
                    [self._next_due(states.get(org)) for org in stale],
                )
        rescorings = effects.silence_rescored
        self.last_alerts = len(effects.alerts)
        if rescorings:
            self.runs += 1
            self.rescorings += rescorings
            if self._on_run is not None:
                kinds = [str(alert.decision.kind) for alert in effects.alerts]
                self._on_run(time.perf_counter() - started, kinds)
        log.info(
            "silence_sweep",
            organizations=len(effects.rescored),
            rescorings=rescorings,
            alerts=len(effects.alerts),
            watermark=watermark.isoformat(),
        )
        return len(rows)

    async def _rescore(
        self, states: dict[str, OrganizationState], watermark: float
    ) -> BatchEffects:
        """The page's silence rescorings, a slice of organizations at a time."""
        # each organization may be a year of silence behind (1,460 grid points):
        # a page makes at most SWEEP_BUDGET, the rest stay due for the next page
        limit = max(1, SWEEP_BUDGET // len(states))
        per_slice = max(1, SWEEP_SLICE // limit)
        organizations = list(states)
        effects = BatchEffects(states={})
        for start in range(0, len(organizations), per_slice):
            if start:
                await asyncio.sleep(0)
            part = {org: states[org] for org in organizations[start : start + per_slice]}
            effects.merge(
                compute_silence_effects(part, watermark, self._step, self._model, limit=limit)
            )
        return effects

    async def watermark(self) -> datetime | None:
        """The log's watermark now (None: nothing to sweep up to yet)."""
        async with self._pool.acquire() as conn:
            frontiers = await conn.fetch(sql.EVENT_TIME_FRONTIERS, self._group, self._topics)
        # the connection is back in the pool before the brokers are asked (seconds at
        # most): the batches share the pool
        return await event_time_watermark(frontiers, self._unread)

    def _next_due(self, state: OrganizationState | None) -> datetime | None:
        return None if state is None else to_datetime(next_silence_rescore(state, self._step))

    async def drain(self, pause: float = 0.05) -> int:
        """Sweep until nothing is due below the watermark; how many organizations taken.

        For the end of a log (replay, the demo): nothing is arriving any more, so it
        takes the organizations a batch applied events to lately too. Waits its turn
        while another sweeper holds the lock or a batch holds rows.
        """
        total = 0
        while True:
            taken = await self.run_once(settle_seconds=0.0)
            total += taken
            if taken == 0:
                if await self.backlog() == 0:
                    return total
                await asyncio.sleep(pause)

    async def backlog(self) -> int:
        """How many organizations are due below the log's watermark now."""
        watermark = await self.watermark()
        if watermark is None:
            return 0
        async with self._pool.acquire() as conn:
            return int(await conn.fetchval(sql.COUNT_SILENT, watermark, 0.0))

    async def purge_processed_events(self, retention_days: int, page: int = 50_000) -> int:
        """Forget event ids older than the dedupe window (wall clock of processing), a
        page per statement; logged (`event_ids_purged`) and counted when any went. Then
        `oldest_event_id_at` is the oldest id kept: its age is the gauge the purge is
        watched by, read here once a purge and not on every scrape (right after a purge
        the index's first entries are dead ones that every such read steps over)."""
        started = time.perf_counter()
        self._purged_at = time.monotonic()
        cutoff = datetime.now(UTC) - timedelta(days=retention_days)
        total = 0
        while True:
            async with self._pool.acquire() as conn:
                status = await conn.execute(sql.PURGE_PROCESSED_EVENTS, cutoff, page)
            deleted = int(status.split()[-1])
            total += deleted
            if deleted and self._on_purge is not None:
                self._on_purge(deleted)
            if deleted < page:
                break
        async with self._pool.acquire() as conn:
            oldest = await conn.fetchval(sql.OLDEST_EVENT_ID)
        # none kept: none older than now, and a purge failing from here on ages it
        self.oldest_event_id_at = oldest if oldest is not None else datetime.now(UTC)
        if total:
            log.info(
                "event_ids_purged",
                rows=total,
                older_than=cutoff.isoformat(),
                seconds=round(time.perf_counter() - started, 3),
            )
        return total

    async def purge_score_history(self, retention_days: int, page: int = 500) -> int:
        """Delete the score history's days before the retention's cutoff (UTC days),
        `page` organizations a statement, each through the history's key; logged
        (`score_history_purged`) and counted when any went. Done once a UTC day: the
        cutoff moves a day a day."""
        started = time.perf_counter()
        before = _history_cutoff(retention_days)
        total = 0
        after: UUID | None = None
        while True:
            async with self._pool.acquire() as conn:
                ids = [row[0] for row in await conn.fetch(sql.ORGANIZATIONS_AFTER, after, page)]
                if not ids:
                    break
                deleted = int(await conn.fetchval(sql.PURGE_SCORE_HISTORY, before, ids))
            total += deleted
            if deleted and self._on_history_purge is not None:
                self._on_history_purge(deleted)
            if len(ids) < page:
                break
            after = ids[-1]
        self._history_purged_before = before
        if total:
            log.info(
                "score_history_purged",
                rows=total,
                before=before.isoformat(),
                seconds=round(time.perf_counter() - started, 3),
            )
        return total

    def oldest_event_id_age(self) -> float:
        """Seconds since the oldest event id kept at the last purge was applied; 0 before
        this process's first purge."""
        oldest = self.oldest_event_id_at
        return 0.0 if oldest is None else (datetime.now(UTC) - oldest).total_seconds()

    async def step(self) -> float | None:
        """Sweep one page (the next at once when it was full), then purge old event ids:
        after a page that was not full, and at least every PURGE_INTERVAL_SECONDS while
        full pages follow each other (a long backlog of silent organizations kept the
        event ids from being forgotten for as long as it lasted). A purge that fails is
        logged and tried again then: it does not hold the sweep's backlog back."""
        full = await self.run_once() >= self._page
        if self._dedupe_retention_days is not None and (not full or self._purge_overdue()):
            try:
                await self.purge_processed_events(self._dedupe_retention_days)
            except Exception as exc:
                log.warning("event_ids_purge_failed", error=type(exc).__name__, message=str(exc))
        retention = self._history_retention_days
        if retention is not None and self._history_purged_before != _history_cutoff(retention):
            try:
                await self.purge_score_history(retention)
            except Exception as exc:
                log.warning(
                    "score_history_purge_failed", error=type(exc).__name__, message=str(exc)
                )
        return AT_ONCE if full else None

    def _purge_overdue(self) -> bool:
        purged = self._purged_at
        return purged is None or time.monotonic() - purged >= PURGE_INTERVAL_SECONDS


def _history_cutoff(retention_days: int) -> date:
    """The first day of score history `retention_days` keeps (UTC days)."""
    return datetime.now(UTC).date() - timedelta(days=retention_days)
