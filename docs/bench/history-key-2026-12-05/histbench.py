"""PostgreSQL backend CPU per row of the score history's day upsert, for table shapes
alternated in one sitting (migration 0069's measurement).

    PYTHONPATH=services:services/lab python docs/bench/history-key-2026-12-05/histbench.py \
        [A_now,B_pk_day,C_pk_day_nofk,A_now,B_pk_day,C_pk_day_nofk]

Each variant: a fresh table beside 100,000 organizations, 20 warm-up batches, then 180
batches of 3,000 rows (random organizations, times over 90 days: mostly inserts, some
updates of a day's row), each in its own transaction; the figure is the backend's
utime + stime (from /proc) per row.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
import sys
import uuid
from pathlib import Path

import asyncpg

from healthscore.store.sql import UPSERT_SCORE_HISTORY
from healthscore_lab.devservices import start_embedded_postgres

ORGANIZATIONS = "CREATE TABLE organizations (id uuid PRIMARY KEY);"
COLUMNS = """
    scored_at timestamptz NOT NULL, health_score numeric(5,2) NOT NULL,
    churn_probability numeric(5,4) NOT NULL, risk_level text NOT NULL,
    components jsonb NOT NULL, score_model_version text NOT NULL, cause text NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    day date GENERATED ALWAYS AS ((scored_at AT TIME ZONE 'UTC')::date) STORED"""
NOTIFY = """
CREATE OR REPLACE FUNCTION changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE ids text[];
BEGIN
    SELECT array_agg(DISTINCT id::text) INTO ids
    FROM (SELECT organization_id FROM new_rows) AS changed (id);
    IF cardinality(ids) > 1000 THEN
        PERFORM pg_notify('healthscore_read_model', TG_TABLE_NAME);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER ti AFTER INSERT ON health_score_history REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION changed();
"""
VARIANTS = {
    # before 0069: identity key, the (organization_id, scored_at DESC) index, day key
    "A_now": f"""
CREATE TABLE health_score_history (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organization_id uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    {COLUMNS},
    CONSTRAINT health_score_history_organization_day_key UNIQUE (organization_id, day));
CREATE INDEX h_os ON health_score_history (organization_id, scored_at DESC);""",
    # 0069: the day key alone
    "B_pk_day": f"""
CREATE TABLE health_score_history (
    organization_id uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    {COLUMNS},
    CONSTRAINT health_score_history_organization_day_key UNIQUE (organization_id, day));""",
    # not done: without the foreign key either
    "C_pk_day_nofk": f"""
CREATE TABLE health_score_history (
    organization_id uuid NOT NULL,
    {COLUMNS},
    CONSTRAINT health_score_history_organization_day_key UNIQUE (organization_id, day));""",
}
VARIANTS["B_trig"] = VARIANTS["B_pk_day"] + NOTIFY  # with a statement trigger like 0051's

COMPONENTS = json.dumps(
    {"engagement": 71.2, "adoption": 55.0, "milestone": 80.0, "support": 92.5, "growth": 60.1}
)
BATCH = 3000


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100


Batch = tuple[list[uuid.UUID], list[dt.datetime]]


async def upsert(conn: asyncpg.Connection, batches: list[Batch]) -> None:
    for organizations, times in batches:
        n = len(organizations)
        async with conn.transaction():
            await conn.execute(
                UPSERT_SCORE_HISTORY,
                organizations,
                times,
                [70.5] * n,
                [0.12] * n,
                ["low"] * n,
                [COMPONENTS] * n,
                "v4",
                ["events"] * n,
            )


async def one_variant(url: str, name: str, organizations: list[uuid.UUID]) -> float:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "DROP TABLE IF EXISTS health_score_history; DROP TABLE IF EXISTS organizations;"
        )
        await conn.execute(ORGANIZATIONS + VARIANTS[name])
        await conn.copy_records_to_table("organizations", records=[(o,) for o in organizations])
        await conn.execute("VACUUM ANALYZE organizations")
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        rng = random.Random(7)
        start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
        batches: list[Batch] = []
        for _ in range(200):
            sample = rng.sample(organizations, BATCH)
            times = [start + dt.timedelta(hours=rng.uniform(0, 24 * 90)) for _ in sample]
            batches.append((sample, times))
        await upsert(conn, batches[:20])  # warm-up, not measured
        before = cpu_seconds(pid)
        await upsert(conn, batches[20:])
        return (cpu_seconds(pid) - before) / (180 * BATCH) * 1e6
    finally:
        await conn.close()


async def main() -> None:
    order = (
        sys.argv[1].split(",") if len(sys.argv) > 1 else ["A_now", "B_pk_day", "C_pk_day_nofk"] * 2
    )
    url, server, _root = start_embedded_postgres(None)
    try:
        organizations = [uuid.uuid4() for _ in range(100_000)]
        results: dict[str, list[float]] = {}
        for name in order:
            figure = await one_variant(url, name, organizations)
            results.setdefault(name, []).append(round(figure, 2))
            print(name, round(figure, 2), "us per row", flush=True)
        print(results)
    finally:
        server.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
