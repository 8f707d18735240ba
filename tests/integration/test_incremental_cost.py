"""A batch costs O(batch), not O(organizations): counted in rows read, not in seconds.

100,000 organizations (with state, a score, and 300,000 remembered event ids)
are seeded with set-based SQL; then one batch touching 10 organizations goes
through the real `BatchPipeline`. PostgreSQL's own table statistics
(`pg_stat_user_tables`, reset just before) count every row the batch read:
sequential scans must be zero on the big tables and the rows fetched a few
per event. The same batch against a 10,000-organization database reads the
same number of rows.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
from aiokafka import AIOKafkaProducer

from healthscore.core.scoring.model import default_model
from healthscore.service.ingest.decode import Decoder, RawRecord
from healthscore.service.ingest.pipeline import BatchPipeline
from healthscore.store.db import create_pool
from tests.conftest import DatabaseFactory

BIG = 100_000
MEDIUM = 10_000
TOUCHED = 10
TABLES = (
    "organizations",
    "organization_state",
    "customer_health",
    "processed_events",
    "support_interactions",
    "success_milestones",
    "consumer_offsets",
)
BIG_TABLES = ("organizations", "organization_state", "customer_health", "processed_events")
USAGE, SUPPORT = "usage.cost", "support.cost"
NOW = datetime.now(UTC).replace(microsecond=0)
T0 = NOW - timedelta(days=3)


async def _seed(database_url: str, organizations: int) -> list[str]:
    """Organizations with a minimal valid state document, a score and 3 event ids each."""
    conn = await asyncpg.connect(database_url)
    try:
        for table in BIG_TABLES:
            # no autovacuum/analyze reading the tables while the counters run
            await conn.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
        await conn.execute(
            "INSERT INTO organizations (id) "
            "SELECT uuid_in(md5('cost-org-' || i)::cstring) FROM generate_series(1, $1) AS i",
            organizations,
        )
        await conn.execute(
            """
            INSERT INTO organization_state
                (organization_id, state_msgpack, last_event_at, rescore_due_at)
            SELECT id,
                   -- JSON, as a release before migration 0066 stored it (still read)
                   convert_to(jsonb_build_object(
                       'organization_id', id::text,
                       'first_event_at', extract(epoch FROM $1::timestamptz),
                       'last_event_at', extract(epoch FROM $1::timestamptz),
                       'last_usage_at', extract(epoch FROM $1::timestamptz),
                       'event_count', 3,
                       'totals', jsonb_build_object('login', 3),
                       'last_score', 62.5,
                       'last_scored_at', extract(epoch FROM $1::timestamptz))::text, 'UTF8'),
                   $1, $1 + interval '6 hours'
            FROM organizations
            """,
            T0,
        )
        await conn.execute(
            """
            INSERT INTO customer_health (organization_id, health_score, churn_probability,
                                         scored_at, score_model_version)
            SELECT id, 62.5, 0.2, $1, 'v1' FROM organizations
            """,
            T0,
        )
        await conn.execute(
            """
            INSERT INTO processed_events (event_id, organization_id, occurred_at)
            SELECT gen_random_uuid(), o.id, $1 FROM organizations o, generate_series(1, 3)
            """,
            T0,
        )
        for table in BIG_TABLES:
            await conn.execute(f"ANALYZE {table}")
        rows = await conn.fetch(
            "SELECT id FROM organizations ORDER BY id LIMIT $1 OFFSET $2",
            TOUCHED,
            organizations // 2,
        )
    finally:
        await conn.close()
    return [str(r["id"]) for r in rows]


def _batch(orgs: list[str]) -> list[RawRecord]:
    """5 usage events per organization, and a support interaction for two of them."""
    records: list[RawRecord] = []
    # offsets as a partition has them (contiguous from 0): the pipeline refuses gaps
    next_offset = [0, 0, 0, 0]
    ts = int(NOW.timestamp() * 1000)
    kinds = ("login", "feature_used", "client_added", "form_created", "payment_received")
    for i, org in enumerate(orgs):
        for n, kind in enumerate(kinds):
            body: dict[str, Any] = {
                "event_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"cost-{org}-{n}")),
                "organization_id": org,
                "user_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"cost-user-{i}")),
                "type": kind,
                "feature": "calendar" if kind == "feature_used" else None,
                "occurred_at": (NOW - timedelta(hours=5 - n)).isoformat(),
            }
            offset = next_offset[i % 4]
            next_offset[i % 4] += 1
            records.append(RawRecord(USAGE, i % 4, offset, org.encode(), orjson.dumps(body), ts))
    for i, org in enumerate(orgs[:2]):
        body = {
            "event_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"cost-support-{org}")),
            "organization_id": org,
            "interaction_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"cost-interaction-{org}")),
            "action": "opened",
            "interaction_type": "check_in",
            "channel": "chat",
            "occurred_at": (NOW - timedelta(hours=1)).isoformat(),
        }
        records.append(RawRecord(SUPPORT, 0, i, org.encode(), orjson.dumps(body), ts))
    return records


STATS = """
SELECT relname, coalesce(seq_scan, 0) AS seq_scan, coalesce(seq_tup_read, 0) AS seq_tup_read,
       coalesce(idx_scan, 0) AS idx_scan, coalesce(idx_tup_fetch, 0) AS idx_tup_fetch,
       n_tup_ins, n_tup_upd
FROM pg_stat_user_tables WHERE relname = ANY($1::text[])
"""


async def _read_stats(conn: asyncpg.Connection[Any]) -> dict[str, dict[str, int]]:
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    return {
        r["relname"]: {k: int(v) for k, v in r.items() if k != "relname"}
        for r in await conn.fetch(STATS, list(TABLES))
    }


async def _measure(database_url: str, bootstrap: str, organizations: int) -> dict[str, Any]:
    orgs = await _seed(database_url, organizations)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False)
    await producer.start()
    pool = await create_pool(database_url, "healthscore_writer", min_size=1, max_size=1)
    admin = await asyncpg.connect(database_url)
    try:
        pipeline = BatchPipeline(
            pool=pool,
            decoder=Decoder(USAGE, SUPPORT, 64 * 1024),
            model=default_model(),
            consumer_group="cost",
            rescore_step_seconds=6 * 3600,
        )
        await admin.execute("SELECT pg_stat_force_next_flush()")
        await admin.execute("SELECT pg_stat_reset()")
        before = await _read_stats(admin)
        started = time.perf_counter()
        outcome = await pipeline.process(_batch(orgs))
        seconds = time.perf_counter() - started
        assert outcome.applied == 5 * TOUCHED + 2 and not outcome.rejected
        assert outcome.organizations_rescored == TOUCHED
        async with pool.acquire() as conn:  # the pipeline's backend: flush its counters now
            await conn.execute("SELECT pg_stat_force_next_flush()")
        after = before
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            after = await _read_stats(admin)
            if (
                after["organization_state"]["n_tup_upd"] - before["organization_state"]["n_tup_upd"]
                >= TOUCHED
                and after["processed_events"]["n_tup_ins"] > 0
            ):
                break
            await asyncio.sleep(0.2)
    finally:
        await admin.close()
        await pool.close()
        await producer.stop()
    delta = {
        table: {k: after[table][k] - before[table][k] for k in after[table]} for table in TABLES
    }
    assert delta["organization_state"]["n_tup_upd"] >= TOUCHED, "statistics never arrived"
    return {"delta": delta, "seconds": seconds}


def _rows_read(delta: dict[str, dict[str, int]], table: str) -> int:
    return delta[table]["seq_tup_read"] + delta[table]["idx_tup_fetch"]


async def test_batch_cost_does_not_depend_on_the_number_of_organizations(
    database_factory: DatabaseFactory, migrated_template: str, kafka_bootstrap: str
) -> None:
    big_db = await database_factory(template=migrated_template)
    medium_db = await database_factory(template=migrated_template)
    big = await _measure(big_db, kafka_bootstrap, BIG)
    medium = await _measure(medium_db, kafka_bootstrap, MEDIUM)

    print(f"\nbatch of {5 * TOUCHED + 2} events, {TOUCHED} organizations")
    for label, result in (("100k", big), ("10k", medium)):
        delta = result["delta"]
        per_table = {t: _rows_read(delta, t) for t in TABLES}
        scans = {t: (delta[t]["seq_scan"], delta[t]["idx_scan"]) for t in TABLES}
        print(f"{label}: rows read {per_table} (seq, idx scans) {scans}", end="")
        print(f" in {result['seconds'] * 1000:.0f} ms")

    delta = big["delta"]
    for table in BIG_TABLES:
        assert delta[table]["seq_scan"] == 0, f"sequential scan on {table}: {delta[table]}"
    total_big = sum(_rows_read(delta, t) for t in TABLES)
    total_medium = sum(_rows_read(medium["delta"], t) for t in TABLES)
    assert total_big < 1000
    assert delta["organization_state"]["idx_scan"] > 0  # the locks went through the key
    # the same work at 10,000 and at 100,000 organizations (both use the indexes; a
    # 100-row table would be scanned sequentially, which is cheaper there)
    assert total_big <= total_medium + 20
