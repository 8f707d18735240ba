"""`healthscore erase` of 200 organizations over 5,000,000 event ids: one scan of
`processed_events` per organization (a page of one, as every erasure was before the
thirty-sixth session) against one per page (`erase_organizations`). Dry runs: both
roll back, so they read the same table.

Run with the suite's fixtures: copy beside a conftest that imports tests.conftest, then
`python -m pytest -s FILE --rootdir . -c pyproject.toml`.
"""

import time

import asyncpg

from healthscore.service.erasure import erase_organization, erase_organizations

ORGANIZATIONS = 200
EVENT_IDS = 5_000_000


async def test_erase_page(migrated_database: str) -> None:
    conn = await asyncpg.connect(migrated_database)
    try:
        await conn.execute(
            "INSERT INTO organizations (id) SELECT md5(i::text)::uuid"
            " FROM generate_series(1, 100000) i"
        )
        await conn.execute(
            "INSERT INTO processed_events (event_id, organization_id, occurred_at)"
            " SELECT gen_random_uuid(), md5((i % 100000 + 1)::text)::uuid, now()"
            " FROM generate_series(1, $1) i",
            EVENT_IDS,
        )
        await conn.execute("VACUUM ANALYZE processed_events")
        size = await conn.fetchval("SELECT pg_size_pretty(pg_table_size('processed_events'))")
        orgs = [
            row["id"]
            for row in await conn.fetch("SELECT id FROM organizations LIMIT $1", ORGANIZATIONS)
        ]
    finally:
        await conn.close()
    eraser = await asyncpg.connect(
        migrated_database, server_settings={"role": "healthscore_eraser"}
    )
    try:
        for round_ in range(2):
            start = time.perf_counter()
            for org in orgs:
                await erase_organization(eraser, org, apply=False)
            each = time.perf_counter() - start
            start = time.perf_counter()
            results = await erase_organizations(eraser, orgs, apply=False)
            paged = time.perf_counter() - start
            assert sum(r.rows["processed_events"] for r in results) == ORGANIZATIONS * 50
            print(
                f"round {round_}: {ORGANIZATIONS} organizations, {EVENT_IDS:,} event ids"
                f" ({size}): one scan each {each:.1f} s, one page {paged:.2f} s"
                f" ({each / paged:.0f}x)"
            )
    finally:
        await eraser.close()
