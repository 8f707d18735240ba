"""Migration 0118's BRIN index: the insert cost of history-shaped rows with and without
it, alternated (run as test_brin_cost.py says).
"""

import time

import asyncpg


async def test_brin_insert_cost(empty_database: str) -> None:
    """Insert cost with and without a BRIN index on day (history-shaped rows, a unique
    key like the history's), alternated."""
    conn = await asyncpg.connect(empty_database)
    try:
        results: dict[str, list[float]] = {"plain": [], "brin": []}
        for round_ in range(3):
            for kind in (
                ("plain", "brin", "brin", "plain")
                if round_ % 2
                else ("brin", "plain", "plain", "brin")
            ):
                await conn.execute("DROP TABLE IF EXISTS h")
                await conn.execute(
                    "CREATE TABLE h (organization_id uuid, day date, score numeric, pad text,"
                    " PRIMARY KEY (organization_id, day))"
                )
                # old days first, vacuumed and summarized, then deleted: new rows reuse the space
                await conn.execute(
                    "INSERT INTO h SELECT md5(i::text)::uuid, DATE '2025-01-01' + (i % 300),"
                    " 50, repeat('x', 200) FROM generate_series(1, 300000) i"
                )
                if kind == "brin":
                    await conn.execute("CREATE INDEX h_brin ON h USING brin (day)")
                await conn.execute("DELETE FROM h WHERE day < DATE '2025-06-01'")
                await conn.execute("VACUUM h")
                started = time.perf_counter()
                await conn.execute(
                    "INSERT INTO h SELECT md5((i + 1000000)::text)::uuid,"
                    " DATE '2026-01-01' + (i % 30), 50, repeat('x', 200)"
                    " FROM generate_series(1, 300000) i"
                )
                results[kind].append(time.perf_counter() - started)
        for kind, times in results.items():
            print(
                f"\n{kind}: "
                + ", ".join(f"{t:.3f}" for t in times)
                + f" s per 300,000 rows; min {min(times):.3f}"
            )
    finally:
        await conn.close()
