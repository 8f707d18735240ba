"""Migration 0118's BRIN index: its build over 3,000,000 history-shaped rows.

Run with the suite's fixtures: copy beside a conftest that imports tests.conftest, then
`python -m pytest -s FILE --rootdir . -c pyproject.toml`.
"""

import time

import asyncpg


async def test_brin_cost(empty_database: str) -> None:
    conn = await asyncpg.connect(empty_database)
    try:
        await conn.execute(
            "CREATE TABLE h AS SELECT md5(i::text)::uuid AS organization_id,"
            " (DATE '2026-01-01' + (i / 10000))::date AS day, repeat('x', 250) AS pad"
            " FROM generate_series(1, 3000000) i"
        )
        size = await conn.fetchval("SELECT pg_size_pretty(pg_total_relation_size('h'))")
        for _ in range(2):
            started = time.perf_counter()
            await conn.execute("CREATE INDEX h_brin ON h USING brin (day)")
            took = time.perf_counter() - started
            isize = await conn.fetchval("SELECT pg_size_pretty(pg_relation_size('h_brin'))")
            print(f"\nBRIN over 3,000,000 rows ({size}): {took:.2f} s, index {isize}")
            await conn.execute("DROP INDEX h_brin")
    finally:
        await conn.close()
