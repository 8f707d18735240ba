"""Silence is a signal: quiet organizations drift down and alert; one sweeper at a time.

State is created through the real `BatchPipeline`; `SilenceSweep.run_once`
is then called at event times days and weeks after the last event, as the
periodic sweep would. Two sweepers on separate pools run concurrently and
must never both rescore (transaction-level advisory lock).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
from aiokafka import AIOKafkaProducer

from healthscore.contracts.enums import AlertKind
from healthscore.db import create_pool
from healthscore.ingest.decode import Decoder, RawRecord
from healthscore.ingest.dlq import DeadLetterQueue
from healthscore.ingest.pipeline import BatchPipeline
from healthscore.scoring.alerts import alert_id_for
from healthscore.scoring.model import default_model
from healthscore.sweep import SWEEP_LOCK_KEY, SilenceSweep

USAGE, SUPPORT = "usage.sweep", "support.sweep"
GROUP = "sweep-test"
STEP = 6 * 3600.0
LAST = (datetime.now(UTC) - timedelta(days=90)).replace(microsecond=0)


def _org(name: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"sweep-{name}"))


class Feed:
    """Usage events into the real pipeline, with consecutive offsets."""

    def __init__(self, pipeline: BatchPipeline) -> None:
        self.pipeline = pipeline
        self.offset = 0

    async def send(self, events: list[tuple[str, str, datetime, dict[str, Any]]]) -> None:
        records = []
        for org, kind, at, extra in events:
            body = {
                "event_id": str(uuid.uuid4()),
                "organization_id": org,
                "type": kind,
                "occurred_at": at.isoformat(),
                **extra,
            }
            ts = int(at.timestamp() * 1000)
            records.append(RawRecord(USAGE, 0, self.offset, org.encode(), orjson.dumps(body), ts))
            self.offset += 1
        outcome = await self.pipeline.process(records)
        assert outcome.applied == len(events) and not outcome.rejected


@contextlib.asynccontextmanager
async def _pipeline(database_url: str, bootstrap: str) -> AsyncIterator[Feed]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False)
    await producer.start()
    pool = await create_pool(database_url, "healthscore_writer")
    try:
        yield Feed(
            BatchPipeline(
                pool=pool,
                decoder=Decoder(USAGE, SUPPORT, 64 * 1024),
                dlq=DeadLetterQueue(producer, ".dlq"),
                model=default_model(),
                consumer_group=GROUP,
                rescore_step_seconds=STEP,
            )
        )
    finally:
        await pool.close()
        await producer.stop()


def _active_history(org: str, end: datetime) -> list[tuple[str, str, datetime, dict[str, Any]]]:
    """Two weeks of steady use by three users, ending at `end`."""
    users = [str(uuid.uuid5(uuid.NAMESPACE_URL, f"{org}-user-{i}")) for i in range(3)]
    features = ["calendar", "invoices", "contracts", "questionnaires", "gallery"]
    events: list[tuple[str, str, datetime, dict[str, Any]]] = [
        (org, "onboarding_completed", end - timedelta(days=14), {"user_id": users[0]}),
        (org, "client_added", end - timedelta(days=13), {"quantity": 12}),
        (org, "payment_received", end - timedelta(days=10), {}),
    ]
    for day in range(14, -1, -1):
        for u, user in enumerate(users):
            at = end - timedelta(days=day, hours=u + 1)
            events.append((org, "login", at, {"user_id": user}))
            feature = features[(day + u) % len(features)]
            events.append((org, "feature_used", at, {"user_id": user, "feature": feature}))
    events.append((org, "email_sent", end, {"quantity": 3}))
    return events


async def _row(conn: asyncpg.Connection[Any], query: str, org: str) -> asyncpg.Record:
    row: asyncpg.Record | None = await conn.fetchrow(query, uuid.UUID(org))
    assert row is not None
    return row


HEALTH = """
SELECT h.health_score::float8 AS score, h.scored_at, s.rescore_due_at, s.last_event_at
FROM customer_health h JOIN organization_state s USING (organization_id)
WHERE h.organization_id = $1
"""


async def test_quiet_organization_drifts_down_and_alerts(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    quiet, recent = _org("quiet"), _org("recent")
    async with _pipeline(migrated_database, kafka_bootstrap) as feed:
        await feed.send(_active_history(quiet, LAST))
        await feed.send(_active_history(recent, LAST + timedelta(days=1, hours=20)))
        sweep = SilenceSweep(feed.pipeline._pool, default_model(), GROUP, STEP)
        conn = await asyncpg.connect(migrated_database)
        try:
            start = await _row(conn, HEALTH, quiet)
            assert start["scored_at"] == start["last_event_at"] == LAST
            assert start["rescore_due_at"] == LAST + timedelta(seconds=STEP)
            assert start["score"] >= 70, "the active organization must start healthy"

            # two days later: the quiet one is due, the recent one (due at +2d 2h) is not
            as_of = LAST + timedelta(days=2)
            assert await sweep.run_once(as_of=as_of) == 1
            after = await _row(conn, HEALTH, quiet)
            assert after["score"] < start["score"]
            assert after["scored_at"] == as_of
            assert after["rescore_due_at"] == as_of + timedelta(seconds=STEP)
            assert after["last_event_at"] == LAST  # time passed; no event did
            untouched = await _row(conn, HEALTH, recent)
            assert untouched["scored_at"] == LAST + timedelta(days=1, hours=20)
            assert await sweep.run_once(as_of=as_of) == 0  # nothing due any more

            # the periodic sweep every 12 hours of event time, for four weeks
            scores = [start["score"], after["score"]]
            for half_days in range(5, 61):
                as_of = LAST + timedelta(hours=12 * half_days)
                assert await sweep.run_once(as_of=as_of) >= 1
                row = await _row(conn, HEALTH, quiet)
                assert row["rescore_due_at"] == as_of + timedelta(seconds=STEP)
                scores.append(row["score"])
            assert all(b <= a for a, b in itertools.pairwise(scores)), scores
            assert scores[-1] < scores[0] - 15

            history = await conn.fetch(
                "SELECT cause, scored_at FROM health_score_history "
                "WHERE organization_id = $1 ORDER BY scored_at",
                uuid.UUID(quiet),
            )
            sweeps = [h for h in history if h["cause"] == "sweep"]
            assert len(sweeps) == 1 + 56
            assert all(h["scored_at"] > LAST for h in sweeps)
            assert {h["cause"] for h in history if h["scored_at"] <= LAST} == {"events"}

            alerts = await conn.fetch(
                "SELECT alert_id, kind, payload::text AS payload FROM alert_outbox "
                "WHERE organization_id = $1 ORDER BY created_at",
                uuid.UUID(quiet),
            )
            assert [a["kind"] for a in alerts][:1] == ["risk_raised"], scores
            raised = orjson.loads(alerts[0]["payload"])
            assert raised["scored_at"] > LAST.isoformat()  # raised by the sweep, not an event
            assert alerts[0]["alert_id"] == alert_id_for(quiet, 1, AlertKind.RISK_RAISED)
            assert raised["risk_level"] in ("high", "critical"), raised
            assert raised["churn_probability"] >= 0.5
            assert raised["risk_factors"] and raised["caused_by"]
            print(f"\nquiet organization: score {scores[0]} -> {scores[-1]} over 30 days")
            print("alerts:", [(a["kind"], orjson.loads(a["payload"])["scored_at"]) for a in alerts])
        finally:
            await conn.close()


async def test_two_sweepers_never_both_sweep(migrated_database: str, kafka_bootstrap: str) -> None:
    orgs = [_org(f"many-{i}") for i in range(300)]
    async with _pipeline(migrated_database, kafka_bootstrap) as feed:
        await feed.send([(org, "login", LAST, {}) for org in orgs])
    model = default_model()
    pools = [await create_pool(migrated_database, "healthscore_writer") for _ in range(2)]
    sweepers = [SilenceSweep(pool, model, GROUP, STEP) for pool in pools]
    conn = await asyncpg.connect(migrated_database)
    try:
        # while another session holds the leader lock, a sweeper does nothing at all
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", SWEEP_LOCK_KEY)
            assert await sweepers[0].run_once(as_of=LAST + timedelta(days=1)) == 0
        assert await _sweep_rows(conn) == 0

        for day in range(1, 6):
            as_of = LAST + timedelta(days=day)
            results = await asyncio.gather(*(s.run_once(as_of=as_of) for s in sweepers))
            assert sorted(results) == [0, len(orgs)], results
            per_org = await conn.fetch(
                "SELECT organization_id, count(*) AS n FROM health_score_history "
                "WHERE cause = 'sweep' AND scored_at = $1 GROUP BY organization_id",
                as_of,
            )
            assert len(per_org) == len(orgs)
            assert {r["n"] for r in per_org} == {1}, "an organization was swept twice"
        assert await _sweep_rows(conn) == 5 * len(orgs)
        assert sum(s.runs for s in sweepers) == 5
    finally:
        await conn.close()
        for pool in pools:
            await pool.close()


async def _sweep_rows(conn: asyncpg.Connection[Any]) -> int:
    n = await conn.fetchval("SELECT count(*) FROM health_score_history WHERE cause = 'sweep'")
    return int(n)
