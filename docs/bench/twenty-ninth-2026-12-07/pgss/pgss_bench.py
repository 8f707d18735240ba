"""`healthscore bench` with `pg_stat_statements` loaded in the embedded PostgreSQL.

The statistics are reset where the bench takes its table counts before the throughput
phase and written to $OUT_DIR/pgss.txt where it takes them after (each later count
overwrites the file: the last is the phase's end). One line a statement: total
execution time in ms, calls, rows, mean ms, the statement's first 150 characters.

    PYTHONPATH=services:services/lab:. python pgss_bench.py bench --events 1000000 \
        --organizations 100000 --baseline-events 0 --skip-latency
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import asyncpg

from healthscore_lab import devservices
from healthscore_lab.bench import runner

OUT = Path(os.environ.get("OUT_DIR", "/tmp")) / "pgss.txt"
devservices.EMBEDDED_POSTGRES_SETTINGS["shared_preload_libraries"] = "pg_stat_statements"
_table_stats = runner._table_stats
_calls = [0]

_REPORT = """
SELECT total_exec_time, calls, rows, mean_exec_time,
       regexp_replace(left(query, 150), '\\s+', ' ', 'g') AS query
FROM pg_stat_statements ORDER BY total_exec_time DESC
"""


async def table_stats(url: str) -> dict[str, tuple[int, int]]:
    conn = await asyncpg.connect(url)
    try:
        if _calls[0] == 0:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            await conn.execute("SELECT pg_stat_statements_reset()")
        else:
            rows = await conn.fetch(_REPORT)
            OUT.write_text(
                "".join(
                    f"{r['total_exec_time']:.0f}|{r['calls']}|{r['rows']}|"
                    f"{r['mean_exec_time']:.3f}|{r['query']}\n"
                    for r in rows
                )
            )
    finally:
        await conn.close()
    _calls[0] += 1
    return await _table_stats(url)


runner._table_stats = table_stats

if __name__ == "__main__":
    from healthscore.cli import main

    sys.exit(main(sys.argv[1:]))
