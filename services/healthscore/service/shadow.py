"""Shadow scoring: a candidate model (SHADOW_MODEL_PATH) scores beside the live one.

A background loop of its own, off the event path: it walks `organization_state`
in id order, a page per step (no row locks, one transaction per page), and
scores each organization whose state changed since the candidate last scored it
(`healthscore.core.quality.shadow_score`). It writes the candidate's score to
`shadow_health` and the alert decisions the candidate would make to
`shadow_alerts`; nothing is published. After the last page it starts over from
the first, after a pause.

The candidate sees each organization as of the state's newest event (or later
silence rescoring: `current_as_of`) when the walk reaches it, every event applied
included, whether the live model decided on it or not: under a steady stream that
is seconds after the live model, but scores an organization had in between (a busy
burst, a catch-up) are not seen by the candidate, so its alerts are decided on
fewer points (their times by at most a walk's length, which the report's 14-day
matching absorbs).

`ShadowReport` compares the candidate's raises with the live ones per
organization (`compare_raises`, as `healthscore evaluate --candidate` does), for
`healthscore shadow-report` and the shadow gauges.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg
import orjson
import structlog

from healthscore.core.quality import (
    WINDOW_DAYS,
    RaiseChanges,
    ShadowScore,
    compare_raises,
    decode_shadow,
    encode_shadow,
    median,
    scoring_differs,
    scoring_settings,
    shadow_alert_id,
    shadow_score,
)
from healthscore.core.scoring.model import DAY, ScoreModel
from healthscore.core.scoring.state import unpack_state
from healthscore.service.ops.metrics import Metrics
from healthscore.service.periodic import AT_ONCE
from healthscore.store import Connection, locks, quality, sql
from healthscore.store.records import to_datetime

log = structlog.get_logger(__name__)

# organizations scored between two returns to the event loop (the consumer shares it)
YIELD_EVERY = 50
WALK_START = UUID(int=0)
# a page whose write found an organization erased since its read is read again
PAGE_ATTEMPTS = 3


class ShadowScorer:
    def __init__(
        self,
        pool: asyncpg.Pool[Any],
        candidate: ScoreModel,
        page_size: int = 500,  # at least 2: a page repeats the previous page's last id
        on_page: Callable[[int, float], None] | None = None,
    ) -> None:
        self._pool = pool
        self._candidate = candidate
        self._page = max(2, page_size)
        self._on_page = on_page
        # the last organization id of the previous page (the nil UUID: from the first)
        self._cursor = WALK_START
        self.scored = 0
        self._settings = scoring_settings(candidate)
        # the settings the version was recorded with that differ from this candidate's
        # (None: not checked yet): while any differ, nothing is scored
        self.refused: list[str] | None = None

    @property
    def version(self) -> str:
        return self._candidate.version

    async def score_page(self) -> tuple[int, bool]:
        """Score one page of the walk; (organizations scored, whether the walk wrapped)."""
        started = time.perf_counter()
        for attempt in range(1, PAGE_ATTEMPTS + 1):
            try:
                page = await self._score_page()
                break
            except asyncpg.ForeignKeyViolationError:
                # an organization of the page was erased between its read and the
                # write (the page takes no row locks): read again, without it
                if attempt == PAGE_ATTEMPTS:
                    raise
        if page is None:
            return 0, True
        rows, scored = page
        # the page starts at the previous page's last id (unchanged since, or scored
        # again): a page that reaches no further is the walk's end
        wrapped = len(rows) < self._page or rows[-1]["organization_id"] == self._cursor
        self._cursor = WALK_START if wrapped else rows[-1]["organization_id"]
        self.scored += scored
        if self._on_page is not None:
            self._on_page(scored, time.perf_counter() - started)
        return scored, wrapped

    async def _score_page(self) -> tuple[list[asyncpg.Record], int] | None:
        """One page's transaction: its rows and how many were scored (None: another
        process leads the walk)."""
        if self.refused is None:
            # committed on its own before any page: a page's rollback must not leave the
            # version unrecorded while this scorer goes on as if it were
            async with self._pool.acquire() as conn:
                self.refused = await self._check_version(conn)
        if self.refused:
            return None
        async with self._pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval(sql.TRY_LEADER_LOCK, locks.SHADOW):
                return None
            rows = await conn.fetch(
                quality.SHADOW_PAGE, self._cursor, self._candidate.version, self._page
            )
            scored: list[tuple[asyncpg.Record, ShadowScore]] = []
            for index, row in enumerate(rows):
                if index % YIELD_EVERY == YIELD_EVERY - 1:
                    await asyncio.sleep(0)
                if row["state"] is None:
                    continue
                live = unpack_state(row["state"])
                own = decode_shadow(row["shadow_state"]) if row["shadow_state"] else None
                # the state is read only when it was written since the candidate's
                # last look (SHADOW_PAGE): changed, even where it stands no later
                result = shadow_score(live, own, self._candidate, changed=True)
                if result is not None:
                    scored.append((row, result))
            if scored:
                await _write(conn, self._candidate.version, scored)
        return list(rows), len(scored)

    async def _check_version(self, conn: Connection) -> list[str]:
        """Record the candidate's settings under its version, or compare them with those
        recorded: the version's rows (scores, episode states, alerts) are another
        candidate's when they differ, and scoring on from them would mix the two."""
        version = self._candidate.version
        await conn.execute(
            quality.RECORD_SHADOW_MODEL, version, orjson.dumps(self._settings).decode()
        )
        differ = await recorded_otherwise(conn, self._candidate)
        if differ:
            log.error(
                "shadow_model_version_reused",
                version=version,
                settings=differ,
                hint="give the candidate a version of its own; nothing is shadow-scored",
            )
        return differ

    async def step(self) -> float | None:
        """One page; the next at once until the walk wraps, then the loop's pause."""
        _scored, wrapped = await self.score_page()
        return None if wrapped else AT_ONCE

    async def catch_up(self) -> int:
        """Walk every organization once (tests, tools); how many scored."""
        self._cursor = WALK_START
        total = 0
        while True:
            scored, wrapped = await self.score_page()
            total += scored
            if wrapped:
                return total


async def recorded_otherwise(conn: Connection, candidate: ScoreModel) -> list[str]:
    """The settings the candidate's version was recorded with (its first score) that
    differ from `candidate`'s; empty when they are its own, or none are recorded."""
    recorded = await conn.fetchval(quality.RECORDED_SHADOW_MODEL, candidate.version)
    if recorded is None:
        return []
    return scoring_differs(orjson.loads(recorded), scoring_settings(candidate))


async def _write(
    conn: Connection, version: str, scored: list[tuple[asyncpg.Record, ShadowScore]]
) -> None:
    await conn.execute(
        quality.UPSERT_SHADOW_HEALTH,
        version,
        [row["organization_id"] for row, _ in scored],
        [s.health.score for _, s in scored],
        [s.health.churn_probability for _, s in scored],
        [str(s.health.risk_level) for _, s in scored],
        [orjson.dumps(s.health.components).decode() for _, s in scored],
        [to_datetime(s.scored_at) for _, s in scored],
        [encode_shadow(s.state).decode() for _, s in scored],
        [row["health_version"] for row, _ in scored],
        [row["started_at"] or to_datetime(s.scored_at) for row, s in scored],
    )
    decided = [(row, s) for row, s in scored if s.decision is not None]
    if decided:
        await conn.execute(
            quality.INSERT_SHADOW_ALERTS,
            version,
            [shadow_alert_id(s.decision, version) for _, s in decided if s.decision is not None],
            [row["organization_id"] for row, _ in decided],
            [str(s.decision.kind) for _, s in decided if s.decision is not None],
            [s.decision.episode for _, s in decided if s.decision is not None],
            [str(s.decision.trigger) for _, s in decided if s.decision is not None],
            [to_datetime(s.scored_at) for _, s in decided],
            [s.health.score for _, s in decided],
            [s.health.churn_probability for _, s in decided],
        )


@dataclass(frozen=True, slots=True)
class ShadowComparison:
    """The candidate against the live model, per organization and in aggregate."""

    candidate: str
    organizations_scored: int
    since: datetime | None  # event time of the candidate's first score
    scored_until: datetime | None
    live_raises: int
    candidate_raises: int
    per_organization: dict[str, RaiseChanges] = field(default_factory=dict)

    @property
    def added(self) -> int:
        return sum(len(c.added) for c in self.per_organization.values())

    @property
    def dropped(self) -> int:
        return sum(len(c.dropped) for c in self.per_organization.values())

    @property
    def moved_days(self) -> list[float]:
        return [d for c in self.per_organization.values() for d in c.moved_days]

    def as_json(self) -> dict[str, Any]:
        moved = self.moved_days
        return {
            "candidate_model": self.candidate,
            "organizations_scored": self.organizations_scored,
            "since": self.since.isoformat() if self.since else None,
            "scored_until": self.scored_until.isoformat() if self.scored_until else None,
            "window_days": WINDOW_DAYS,
            "live_raises": self.live_raises,
            "candidate_raises": self.candidate_raises,
            "added": self.added,
            "dropped": self.dropped,
            "moved": len(moved),
            "moved_earlier": sum(1 for d in moved if d < 0),
            "median_move_days": median(moved),
            "organizations_changed": len(self.per_organization),
            "per_organization": {
                org: {
                    "added": [_iso(t) for t in c.added],
                    "dropped": [_iso(t) for t in c.dropped],
                    "moved_days": c.moved_days,
                }
                for org, c in sorted(self.per_organization.items())
            },
        }


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat()


async def compare_shadow(
    conn: Connection, candidate: str, organization: UUID | None = None
) -> ShadowComparison:
    """Which raises the candidate adds, drops or moves against the live ones, for the
    organizations it scored (from its first score of each on)."""
    counts = await conn.fetchrow(quality.SHADOW_COUNT, candidate)
    assert counts is not None
    raises: dict[str, dict[str, list[float]]] = {}
    totals = {"live": 0, "candidate": 0}
    for row in await conn.fetch(quality.SHADOW_RAISES, candidate, organization):
        org = str(row["organization_id"])
        raises.setdefault(org, {"live": [], "candidate": []})[row["model"]].append(row["raised_at"])
        totals[row["model"]] += 1
    changes = {
        org: c
        for org, both in raises.items()
        if (c := compare_raises(both["live"], both["candidate"])).changed
    }
    return ShadowComparison(
        candidate=candidate,
        organizations_scored=counts["organizations"],
        since=counts["since"],
        scored_until=counts["scored_until"],
        live_raises=totals["live"],
        candidate_raises=totals["candidate"],
        per_organization=changes,
    )


def format_comparison(report: ShadowComparison, live_version: str | None) -> str:
    """The report as a readable table."""
    moved = report.moved_days
    lines = [
        f"candidate {report.candidate} against the live model"
        + (f" {live_version}" if live_version else "")
        + f": {report.organizations_scored} organizations scored"
        + (f" since {report.since:%Y-%m-%d %H:%M} UTC" if report.since else ""),
        f"raises: live {report.live_raises}, candidate {report.candidate_raises} "
        f"(matched within {WINDOW_DAYS:g} days)",
        f"added {report.added}, dropped {report.dropped}, moved {len(moved)} "
        f"({sum(1 for d in moved if d < 0)} earlier"
        + (f", median {median(moved):+.2f} days" if moved else "")
        + f"), organizations changed {len(report.per_organization)}",
    ]
    if report.per_organization:
        lines.append("")
        lines.append(f"{'organization':<38} {'added':>5} {'dropped':>7}  moved (days)")
        for org, c in sorted(report.per_organization.items()):
            days = ", ".join(f"{d:+.2f}" for d in c.moved_days) or "-"
            lines.append(f"{org:<38} {len(c.added):>5} {len(c.dropped):>7}  {days}")
    return "\n".join(lines)


class ShadowGauges:
    """The comparison's figures on /metrics (a periodic step: it reads every raise)."""

    def __init__(
        self, pool: asyncpg.Pool[Any], metrics: Metrics, candidate: str, live: str
    ) -> None:
        self._pool = pool
        self._metrics = metrics
        self._candidate = candidate
        metrics.shadow_info.labels(candidate, live).set(1)
        self.latest: ShadowComparison | None = None

    async def refresh(self) -> None:
        async with self._pool.acquire() as conn:
            report = await compare_shadow(conn, self._candidate)
        m = self._metrics
        m.shadow_organizations.set(report.organizations_scored)
        m.shadow_raises.labels("live").set(report.live_raises)
        m.shadow_raises.labels("candidate").set(report.candidate_raises)
        moved = report.moved_days
        m.shadow_episode_changes.labels("added").set(report.added)
        m.shadow_episode_changes.labels("dropped").set(report.dropped)
        m.shadow_episode_changes.labels("moved").set(len(moved))
        middle = median(moved)
        m.shadow_median_move.set(math.nan if middle is None else middle * DAY)
        self.latest = report
