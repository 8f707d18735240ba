"""The upgrade lab at a small scale: it fills a database as an earlier release left it
and applies today's pending migrations with its probes. The figures are the script's
to measure (docs/operations.md, Upgrading); here only that it runs to the end."""

from __future__ import annotations

import asyncpg

from healthscore.store.migrate import load_migrations, migrations_path
from healthscore_lab.upgrade_bench import parser, upgrade


async def test_the_upgrade_lab_fills_a_release_0077_database_and_applies_the_rest(
    empty_database: str,
) -> None:
    args = parser().parse_args(
        [
            "--admin-url",
            empty_database,
            "--from-version",
            "0078",
            "--organizations",
            "300",
            "--dead-letters",
            "50",
        ]
    )
    observed = await upgrade(empty_database, args)

    shipped = load_migrations(migrations_path())
    assert [name for name, _ in observed] == [m.file_name for m in shipped if m.version >= "0078"]
    assert all(o.seconds > 0 for _, o in observed)
    conn = await asyncpg.connect(empty_database)
    try:
        counts = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM organization_state) AS states, "
            "(SELECT count(*) FROM health_score_history) AS history, "
            "(SELECT count(*) FROM support_interactions) AS interactions, "
            "(SELECT count(*) FROM dead_letter_outbox WHERE source_topic <> 'probe') AS dead, "
            "(SELECT count(*) FROM schema_migrations) AS applied"
        )
    finally:
        await conn.close()
    assert counts is not None
    # the probes' writes were rolled back: only the fill is there
    assert dict(counts) == {
        "states": 300,
        "history": 900,
        "interactions": 600,
        "dead": 50,
        "applied": len(shipped),
    }
