"""Organizations the bench's stream never touches, so the tables are big.

`--prefill` separates two things the organization-scaling run mixes up: the
size of the tables (does a batch cost more when the database holds a million
organizations?) and the number of distinct organizations per batch (a stream
over a million organizations touches a different one with almost every
event, and each costs its own reads and writes). A prefilled run streams the
same events as an empty one into tables that already hold N other
organizations, each with the rows the service keeps for it: the
organization, its state, its customer_health row, one score history row and
one processed event id.

Generated inside PostgreSQL (generate_series), in chunks, then VACUUMed and
ANALYZEd and checkpointed: a database that has held a million organizations
for a while has its visibility map and hint bits set and its statistics
current, while a bulk load just made has not, and the autovacuum, hint-bit
writes and checkpoint it is owed would otherwise land in the measured run.
"""

from __future__ import annotations

import contextlib

import asyncpg

CHUNK = 100_000

_ORGANIZATIONS = """
INSERT INTO organizations (id, name)
SELECT gen_random_uuid(), 'prefill' FROM generate_series(1, $1)
RETURNING id
"""

# The dependent rows of the organizations just inserted (ids passed back in).
_DEPENDENTS = (
    """
    INSERT INTO organization_state (organization_id, state_msgpack, last_event_at, rescore_due_at)
    SELECT id, convert_to(json_build_object('organization_id', id::text, 'event_count', 1)::text,
                          'UTF8'),
           now() - interval '40 days', now() + interval '3650 days'
    FROM unnest($1::uuid[]) AS x(id)
    """,
    """
    INSERT INTO customer_health (
        organization_id, health_score, engagement_score, adoption_score, milestone_score,
        support_score, growth_score, churn_probability, risk_factors, feature_usage,
        last_activity_at, scored_at, score_model_version)
    SELECT id, s, s, s, s, s, s, round((1 - s / 100) * 0.6, 4),
           '[{"factor": "inactivity", "value": 40, "impact": -12.5, "detail": "prefill"}]',
           '{}', now() - interval '40 days', now() - interval '40 days', 'prefill'
    FROM (SELECT id, round((random() * 100)::numeric, 2) AS s
          FROM unnest($1::uuid[]) AS x(id)) AS scored
    """,
    """
    INSERT INTO health_score_history (
        organization_id, scored_at, health_score, churn_probability, risk_level,
        components, score_model_version, cause)
    SELECT id, now() - interval '40 days', 50, 0.3, 'medium', '{}', 'prefill', 'events'
    FROM unnest($1::uuid[]) AS x(id)
    """,
    """
    INSERT INTO processed_events (event_id, organization_id, occurred_at)
    SELECT gen_random_uuid(), id, now() - interval '40 days'
    FROM unnest($1::uuid[]) AS x(id)
    """,
)

_TABLES = (
    "organizations",
    "organization_state",
    "customer_health",
    "health_score_history",
    "processed_events",
)


async def prefill_organizations(database_url: str, count: int) -> None:
    """Add `count` untouched organizations with their rows, then VACUUM ANALYZE them."""
    conn = await asyncpg.connect(database_url)
    try:
        done = 0
        while done < count:
            size = min(CHUNK, count - done)
            async with conn.transaction():
                ids = [r["id"] for r in await conn.fetch(_ORGANIZATIONS, size)]
                for statement in _DEPENDENTS:
                    await conn.execute(statement, ids)
            done += size
        for table in _TABLES:
            # identifiers from the fixed tuple above, never from input
            await conn.execute(f"VACUUM (ANALYZE) {table}")
        with contextlib.suppress(asyncpg.InsufficientPrivilegeError):
            # only a superuser (or pg_checkpoint) may; elsewhere the run pays for it
            await conn.execute("CHECKPOINT")
    finally:
        await conn.close()
