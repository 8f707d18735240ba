"""The relay: publish pending alerts in order, record failures that survive the rollback."""

from __future__ import annotations

import uuid

import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from healthscore.service.outbox import AlertPublishError, OutboxRelay
from healthscore.service.periodic import AT_ONCE, LOCK_BUSY_RETRY
from healthscore.store import locks
from healthscore.store.db import create_pool
from tests.utils.harness import consume_all, make_topics


async def _insert_alerts(url: str, org: uuid.UUID, payload_size: int, n: int) -> list[uuid.UUID]:
    ids = [uuid.uuid4() for _ in range(n)]
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("INSERT INTO organizations (id) VALUES ($1)", org)
        for episode, alert_id in enumerate(ids, start=1):
            payload = {
                "alert_id": str(alert_id),
                "organization_id": str(org),
                "kind": "risk_raised",
                "pad": "x" * payload_size,
            }
            await conn.execute(
                "INSERT INTO alert_outbox (alert_id, organization_id, kind, episode, payload) "
                "VALUES ($1, $2, 'risk_raised', $3, $4::jsonb)",
                alert_id,
                org,
                episode,
                orjson.dumps(payload).decode(),
            )
    finally:
        await conn.close()
    return ids


async def test_a_failed_publish_is_recorded_and_the_alerts_stay_pending(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    topics = await make_topics(kafka_bootstrap, partitions=1)
    org = uuid.uuid4()
    await _insert_alerts(migrated_database, org, payload_size=4000, n=2)
    pool = await create_pool(migrated_database, "healthscore_writer")
    # a real producer that refuses these records: larger than its request limit
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, max_request_size=1024)
    await producer.start()
    try:
        relay = OutboxRelay(pool, producer, topics.alerts)
        with pytest.raises(AlertPublishError):
            await relay.relay_alerts()
    finally:
        await producer.stop()
        await pool.close()
    conn = await asyncpg.connect(migrated_database)
    try:
        rows = await conn.fetch(
            "SELECT published_at, publish_attempts, last_error FROM alert_outbox"
        )
    finally:
        await conn.close()
    assert len(rows) == 2
    assert all(r["published_at"] is None for r in rows)
    assert all(r["publish_attempts"] == 1 for r in rows)
    assert all("MessageSizeTooLarge" in r["last_error"] for r in rows)


async def test_pending_alerts_leave_in_insertion_order_and_are_marked(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    topics = await make_topics(kafka_bootstrap, partitions=1)
    org = uuid.uuid4()
    ids = await _insert_alerts(migrated_database, org, payload_size=10, n=5)
    pool = await create_pool(migrated_database, "healthscore_writer")
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        relay = OutboxRelay(pool, producer, topics.alerts)
        assert await relay.relay_alerts() == 5
        assert await relay.relay_alerts() == 0
    finally:
        await producer.stop()
        await pool.close()
    records = await consume_all(kafka_bootstrap, topics.alerts, expect=5)
    assert [orjson.loads(r.value)["alert_id"] for r in records] == [str(i) for i in ids]
    assert all(orjson.loads(r.value)["emitted_at"] for r in records)


async def test_a_relay_that_finds_another_publishing_tries_again_soon(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    # another process's relay may have read the outbox before this process's alerts
    # committed: woken for them, this relay must not wait a whole poll interval
    topics = await make_topics(kafka_bootstrap, partitions=1)
    await _insert_alerts(migrated_database, uuid.uuid4(), payload_size=10, n=2)
    pool = await create_pool(migrated_database, "healthscore_writer")
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    other = await asyncpg.connect(migrated_database)
    try:
        relay = OutboxRelay(pool, producer, topics.alerts)
        async with other.transaction():
            await other.execute("SELECT pg_advisory_xact_lock($1)", locks.RELAY)
            assert await relay.step() == LOCK_BUSY_RETRY
        assert await relay.step() == AT_ONCE  # the two alerts
        assert await relay.step() is None  # nothing pending, nobody publishing
    finally:
        await other.close()
        await producer.stop()
        await pool.close()


async def test_a_publish_not_acked_in_time_fails_the_page_and_says_so(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    # the relay holds the relay lock while it waits: the wait is bounded
    topics = await make_topics(kafka_bootstrap, partitions=1)
    await _insert_alerts(migrated_database, uuid.uuid4(), payload_size=10, n=2)
    pool = await create_pool(migrated_database, "healthscore_writer")
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        # no broker round trip fits in a microsecond
        relay = OutboxRelay(pool, producer, topics.alerts, publish_timeout=1e-6)
        with pytest.raises(AlertPublishError, match="did not acknowledge 2 alerts"):
            await relay.relay_alerts()
        assert await OutboxRelay(pool, producer, topics.alerts).relay_alerts() == 2
    finally:
        await producer.stop()
        await pool.close()
