"""health_score_history holds one row per organization per event-time day (migration 0040).

The migration keeps each existing day's latest score; the service's upsert
(`UPSERT_SCORE_HISTORY`) keeps a day's latest by as-of time; the table refuses
a second row for a day.
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from healthscore.store import sql
from healthscore.store.migrate import apply_migrations
from tests.utils import schema_builders as b
from tests.utils.migrations import migrate_before

DAY1 = datetime(2026, 3, 10, tzinfo=UTC)
HISTORY = """
SELECT organization_id, day, scored_at, health_score::float8 AS score, cause
FROM health_score_history ORDER BY organization_id, day
"""


async def _organizations(conn: asyncpg.Connection, n: int) -> list[uuid.UUID]:
    orgs = sorted(uuid.uuid4() for _ in range(n))
    await conn.execute("INSERT INTO organizations (id) SELECT unnest($1::uuid[])", orgs)
    return orgs


async def test_migration_keeps_each_days_latest_score(empty_database: str, tmp_path: Path) -> None:
    await migrate_before(empty_database, "0040", tmp_path / "before")
    conn = await asyncpg.connect(empty_database)
    try:
        a, other = await _organizations(conn, 2)
        # (organization, scored_at, score) in the order written: per batch, as before 0040
        written = [
            (a, DAY1 + timedelta(hours=9), 60),
            (a, DAY1 + timedelta(hours=18), 50),
            (a, DAY1 + timedelta(hours=18), 49),  # the same instant, written later: kept
            (a, DAY1 + timedelta(hours=7), 70),  # written later, older: not kept
            (a, DAY1 + timedelta(days=1, microseconds=-1), 45),  # the day's last instant
            (a, DAY1 + timedelta(days=1), 40),  # the next day's first
            (other, DAY1 + timedelta(hours=12), 80),
        ]
        for org, at, score in written:
            await b.insert_row(
                conn,
                "health_score_history",
                b.health_score_history(org, scored_at=at, health_score=score),
            )
        await apply_migrations(empty_database)
        rows = [tuple(r) for r in await conn.fetch(HISTORY)]
    finally:
        await conn.close()
    assert rows == [
        (a, date(2026, 3, 10), DAY1 + timedelta(days=1, microseconds=-1), 45.0, "events"),
        (a, date(2026, 3, 11), DAY1 + timedelta(days=1), 40.0, "events"),
        (other, date(2026, 3, 10), DAY1 + timedelta(hours=12), 80.0, "events"),
    ]


def _upsert_args(
    rows: list[tuple[uuid.UUID, datetime, float, str]],
) -> list[Any]:
    return [
        [org for org, _, _, _ in rows],
        [at for _, at, _, _ in rows],
        [score for _, _, score, _ in rows],
        [0.3 for _ in rows],
        ["medium" for _ in rows],
        ['{"engagement": 50}' for _ in rows],
        "v2",
        [cause for _, _, _, cause in rows],
    ]


async def test_the_upsert_keeps_the_latest_score_of_each_day(migrated_database: str) -> None:
    conn = await asyncpg.connect(migrated_database)
    try:
        a, other = await _organizations(conn, 2)

        async def upsert(*rows: tuple[uuid.UUID, datetime, float, str]) -> list[tuple[Any, ...]]:
            await conn.execute(sql.UPSERT_SCORE_HISTORY, *_upsert_args(list(rows)))
            return [tuple(r) for r in await conn.fetch(HISTORY)]

        ten = DAY1 + timedelta(hours=10)
        assert await upsert((a, ten, 50, "events"), (other, ten, 70, "events")) == [
            (a, date(2026, 3, 10), ten, 50.0, "events"),
            (other, date(2026, 3, 10), ten, 70.0, "events"),
        ]
        # an older score of the day never replaces a newer one
        assert (await upsert((a, DAY1 + timedelta(hours=8), 10, "events")))[0][2:] == (
            ten,
            50.0,
            "events",
        )
        # the same as-of time, written later (applied later): replaces it
        assert (await upsert((a, ten, 45, "sweep")))[0][2:] == (ten, 45.0, "sweep")
        recorded = await conn.fetchval(
            "SELECT recorded_at FROM health_score_history WHERE organization_id = $1", a
        )
        last = DAY1 + timedelta(days=1, microseconds=-1)
        rows = await upsert((a, last, 30, "events"), (a, DAY1 + timedelta(days=1), 20, "events"))
        assert [r[1:] for r in rows if r[0] == a] == [
            (date(2026, 3, 10), last, 30.0, "events"),
            (date(2026, 3, 11), DAY1 + timedelta(days=1), 20.0, "events"),
        ]
        assert (
            await conn.fetchval(
                "SELECT recorded_at FROM health_score_history "
                "WHERE organization_id = $1 AND day = '2026-03-10'",
                a,
            )
            >= recorded
        )
        # one statement cannot write a day twice: the batch hands over one row per day
        with pytest.raises(asyncpg.CardinalityViolationError):
            await upsert((other, ten, 1, "events"), (other, ten + timedelta(hours=1), 2, "events"))
    finally:
        await conn.close()


async def test_one_row_per_organization_and_day(migrated_database: str) -> None:
    conn = await asyncpg.connect(migrated_database)
    try:
        (org,) = await _organizations(conn, 1)
        await b.insert_row(
            conn, "health_score_history", b.health_score_history(org, scored_at=DAY1)
        )
        with pytest.raises(asyncpg.UniqueViolationError) as raised:
            await b.insert_row(
                conn,
                "health_score_history",
                b.health_score_history(org, scored_at=DAY1 + timedelta(hours=23)),
            )
        assert raised.value.constraint_name == "health_score_history_organization_day_key"
        # the day is the UTC date, whatever the session's time zone
        await conn.execute("SET TIME ZONE 'America/Los_Angeles'")
        await b.insert_row(
            conn,
            "health_score_history",
            b.health_score_history(org, scored_at=DAY1 - timedelta(hours=1)),
        )
        days = await conn.fetch(
            "SELECT day FROM health_score_history WHERE organization_id = $1 ORDER BY day", org
        )
        assert [r["day"] for r in days] == [date(2026, 3, 9), date(2026, 3, 10)]
    finally:
        await conn.close()
