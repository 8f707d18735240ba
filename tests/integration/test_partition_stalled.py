"""A partition with records to consume whose stored offset does not move.

The reviewer's replica (review 36b, M1) stopped fetching one partition while the
others went on: ready, nothing logged, and no alert, its lag constant below the lag
rules' thresholds. `healthscore_partition_stalled_seconds` says how long, from the
gauge refresher's reading of the real broker's high watermarks beside the offsets
stored in real PostgreSQL.
"""

from __future__ import annotations

import uuid

import asyncpg

from healthscore.service.kafka_clients import KafkaConnection
from healthscore.service.ops.gauges import GaugeRefresher
from healthscore.service.ops.metrics import Metrics
from healthscore.store.db import create_pool
from tests.utils.fakes import FakeClock
from tests.utils.harness import make_producer, make_topics


async def test_a_partition_that_does_not_move_is_measured(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    topics = await make_topics(kafka_bootstrap, partitions=2)
    producer = await make_producer(kafka_bootstrap)
    try:
        for partition in (0, 1):
            for _ in range(5):
                await producer.send_and_wait(topics.usage, b"{}", key=b"k", partition=partition)
    finally:
        await producer.stop()
    group = f"g-{uuid.uuid4().hex[:8]}"
    metrics = Metrics()
    clock = FakeClock(100.0)
    pool = await create_pool(migrated_database, "healthscore_writer", min_size=1, max_size=2)
    admin = await asyncpg.connect(migrated_database)
    refresher = GaugeRefresher(
        pool, metrics, KafkaConnection(kafka_bootstrap), group, [topics.usage], clock=clock
    )

    async def stalled() -> dict[int, float]:
        await refresher.refresh()
        return {
            p: metrics.partition_stalled.labels(topics.usage, str(p))._value.get() for p in (0, 1)
        }

    async def store(partition: int, offset: int) -> None:
        await admin.execute(
            "INSERT INTO consumer_offsets (consumer_group, topic, partition, next_offset)"
            " VALUES ($1, $2, $3, $4) ON CONFLICT (consumer_group, topic, partition)"
            " DO UPDATE SET next_offset = EXCLUDED.next_offset",
            group,
            topics.usage,
            partition,
            offset,
        )

    try:
        await store(0, 1)
        await store(1, 1)
        assert await stalled() == {0: 0.0, 1: 0.0}  # first seen: not yet anything
        clock.now += 120
        await store(1, 3)  # partition 1 moves, partition 0 does not
        assert await stalled() == {0: 120.0, 1: 0.0}
        clock.now += 600
        await store(1, 5)  # consumed to its end: nothing to consume, nothing stalled
        assert await stalled() == {0: 720.0, 1: 0.0}
        clock.now += 60
        await store(0, 2)
        assert await stalled() == {0: 0.0, 1: 0.0}
    finally:
        await refresher.close()
        await admin.close()
        await pool.close()
