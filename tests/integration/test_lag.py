"""Consumer lag from true high watermarks, also where ListOffsets is stale."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import subprocess
import sys
import warnings

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError

from healthscore.service.kafka_clients import KafkaConnection
from healthscore.service.ops.lag import HighWatermarkProbe, consumer_lag
from tests.utils.harness import make_producer, make_topics


async def _produce_singles(producer: AIOKafkaProducer, topic: str, partition: int, n: int) -> None:
    for i in range(n):  # one record per produce request: one record batch each
        await producer.send_and_wait(topic, b"x%d" % i, key=b"k", partition=partition)


async def _produce_batched(producer: AIOKafkaProducer, topic: str, partition: int, n: int) -> None:
    futures = [await producer.send(topic, b"y%d" % i, partition=partition) for i in range(n)]
    await asyncio.gather(*futures)  # many records per produce request


async def test_high_watermarks_match_produced_counts_for_single_and_batched_produces(
    kafka_bootstrap: str,
) -> None:
    topics = await make_topics(kafka_bootstrap, partitions=3)
    producer = await make_producer(kafka_bootstrap)
    try:
        await _produce_singles(producer, topics.usage, 0, 7)
        await _produce_batched(producer, topics.usage, 1, 250)
        await _produce_singles(producer, topics.usage, 1, 3)
    finally:
        await producer.stop()
    async with HighWatermarkProbe(KafkaConnection(kafka_bootstrap)) as probe:
        partitions = await probe.partitions([topics.usage])
        marks = await probe.high_watermarks(partitions)
    assert marks == {(topics.usage, 0): 7, (topics.usage, 1): 253, (topics.usage, 2): 0}


async def test_lag_command_reads_stored_offsets_and_exits_above_threshold(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    topics = await make_topics(kafka_bootstrap, partitions=2)
    producer = await make_producer(kafka_bootstrap)
    try:
        await _produce_batched(producer, topics.usage, 0, 40)
        await _produce_singles(producer, topics.usage, 1, 5)
        await _produce_singles(producer, topics.support, 0, 2)
    finally:
        await producer.stop()
    conn = await asyncpg.connect(migrated_database)
    try:
        await conn.execute(
            "INSERT INTO consumer_offsets (consumer_group, topic, partition, next_offset) "
            "VALUES ('lagtest', $1, 0, 30), ('lagtest', $1, 1, 5)",
            topics.usage,
        )
        lags = await consumer_lag(
            KafkaConnection(kafka_bootstrap), conn, "lagtest", [topics.usage, topics.support]
        )
    finally:
        await conn.close()
    by_tp = {(p.topic, p.partition): p.lag for p in lags}
    assert by_tp == {
        (topics.usage, 0): 10,
        (topics.usage, 1): 0,
        (topics.support, 0): 2,  # never stored: everything is lag
        (topics.support, 1): 0,
    }

    env = dict(os.environ)
    env.update(
        {
            "DATABASE_URL": migrated_database,
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "USAGE_TOPIC": topics.usage,
            "SUPPORT_TOPIC": topics.support,
        }
    )

    def run(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "healthscore.cli", "lag", "--group", "lagtest", *extra],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    ok = await asyncio.to_thread(run, "--json", "--max-lag", "12")
    assert ok.returncode == 0, ok.stderr
    report = json.loads(ok.stdout)
    assert report["total_lag"] == 12
    over = await asyncio.to_thread(run, "--max-lag", "11")
    assert over.returncode == 1
    assert "above --max-lag" in over.stderr
    assert "total lag of group lagtest: 12" in over.stdout


async def test_a_probe_that_cannot_reach_the_cluster_closes_its_consumer() -> None:
    # the gauges open a probe every 5 s while the brokers are down: each one left
    # unclosed printed "Unclosed AIOKafkaConsumer" on stderr when collected
    probe = HighWatermarkProbe(KafkaConnection("127.0.0.1:1"))
    with pytest.raises(KafkaConnectionError):
        await probe.__aenter__()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del probe
        gc.collect()
    assert [str(w.message) for w in caught if "Unclosed" in str(w.message)] == []
