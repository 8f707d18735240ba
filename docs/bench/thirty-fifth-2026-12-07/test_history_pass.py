"""The score history's daily pass (HISTORY_RETENTION_DAYS) over 100,000 organizations.

Run with the suite's fixtures: copy beside a conftest that imports tests.conftest, then
`python -m pytest -s FILE --rootdir . -c pyproject.toml`.
"""

import time

import asyncpg

from healthscore.core.scoring.model import default_model
from healthscore.service.sweep import SilenceSweep
from healthscore.store.db import create_pool


async def test_history_pass(migrated_database: str) -> None:
    conn = await asyncpg.connect(migrated_database)
    try:
        await conn.execute(
            "INSERT INTO organizations (id) SELECT md5(i::text)::uuid"
            " FROM generate_series(1, 100000) i"
        )
        for ago in (100, 70, 10):  # two days past a 60-day cutoff, one kept
            await conn.execute(
                "INSERT INTO health_score_history (organization_id, scored_at, health_score,"
                " churn_probability, risk_level, components, score_model_version, cause)"
                " SELECT id, now() - make_interval(days => $1), 70, 0.1, 'low', '{}', 'v4',"
                " 'events' FROM organizations",
                ago,
            )
        await conn.execute("VACUUM ANALYZE health_score_history")
    finally:
        await conn.close()
    pool = await create_pool(migrated_database, "healthscore_writer")
    try:
        sweep = SilenceSweep(pool, default_model(), "g", 21600.0, topics=[])
        for label in ("first pass", "next pass (nothing to delete)"):
            started = time.perf_counter()
            deleted = await sweep.purge_score_history(60)
            print(f"\n{label}: {deleted} rows, {time.perf_counter() - started:.2f} s")
    finally:
        await pool.close()
