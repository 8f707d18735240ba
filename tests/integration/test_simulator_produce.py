"""The simulator's producer loop against a real broker: everything sent arrives intact."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from healthscore_lab.simulator import SimulatedMessage, SimulationConfig, generate, produce

TopicFactory = Callable[..., Awaitable[str]]


def _ms(moment: datetime) -> int:
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


async def _consume(bootstrap: str, topics: list[str], expected: int) -> list[Any]:
    consumer = AIOKafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    records: list[Any] = []
    try:
        deadline = asyncio.get_running_loop().time() + 60
        while len(records) < expected and asyncio.get_running_loop().time() < deadline:
            batch = await consumer.getmany(timeout_ms=500, max_records=1000)
            for partition_records in batch.values():
                records.extend(partition_records)
        # nothing beyond what was sent
        extra = await consumer.getmany(timeout_ms=300)
        records.extend(
            record for partition_records in extra.values() for record in partition_records
        )
    finally:
        await consumer.stop()
    return records


async def test_produce_and_consume_back(kafka_bootstrap: str, topic_factory: TopicFactory) -> None:
    usage_topic = await topic_factory("product.usage.v1")
    support_topic = await topic_factory("support.interactions.v1")
    now = datetime.now(UTC)
    config = SimulationConfig(
        start=now - timedelta(hours=3),
        span=timedelta(hours=2),
        organizations=20,
        events=2000,
        seed=3,
        duplicate_rate=0.02,
        malformed_rate=0.005,
    )
    messages: list[SimulatedMessage] = list(generate(config))
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap,
        acks="all",
        enable_idempotence=False,
        max_request_size=1024 * 1024,
    )
    await producer.start()
    try:
        stats = await produce(messages, producer, usage_topic, support_topic)
    finally:
        await producer.stop()
    assert stats.sent == len(messages)
    assert stats.valid == 2000
    assert stats.duplicates == 40
    assert stats.malformed == 10
    assert stats.seconds > 0

    records = await _consume(kafka_bootstrap, [usage_topic, support_topic], len(messages))
    assert len(records) == len(messages)
    by_topic = Counter(record.topic for record in records)
    assert by_topic[usage_topic] == sum(1 for m in messages if m.topic_kind == "usage")
    assert by_topic[support_topic] == sum(1 for m in messages if m.topic_kind == "support")

    sent = Counter((m.key, m.value) for m in messages)
    received = Counter((record.key, record.value) for record in records)
    assert received == sent

    timestamps = {(m.value, _ms(m.occurred_at)) for m in messages if m.occurred_at is not None}
    valid_values = {m.value: m for m in messages if m.valid}
    for record in records:
        message = valid_values.get(record.value)
        if message is None:
            continue
        assert message.organization_id is not None
        assert record.key == message.organization_id.encode()
        assert (record.value, record.timestamp) in timestamps

    # one organization's originals arrive in event-time order (one key, one partition per topic)
    last_seen: dict[tuple[str, bytes], int] = {}
    first_copies: set[bytes] = set()
    for record in records:
        if record.value not in valid_values or record.value in first_copies:
            continue  # malformed, or the later copy of a duplicate
        first_copies.add(record.value)
        stream = (record.topic, record.key)
        assert record.timestamp >= last_seen.get(stream, 0)
        last_seen[stream] = record.timestamp
    assert {key for _, key in last_seen} == {m.key for m in messages if m.valid}


async def test_rate_paces_the_stream(kafka_bootstrap: str, topic_factory: TopicFactory) -> None:
    usage_topic = await topic_factory("product.usage.v1", partitions=1)
    support_topic = await topic_factory("support.interactions.v1", partitions=1)
    config = SimulationConfig(
        start=datetime.now(UTC) - timedelta(hours=1),
        span=timedelta(minutes=30),
        organizations=5,
        events=300,
        malformed_rate=0.0,
        duplicate_rate=0.0,
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, acks="all", enable_idempotence=False
    )
    await producer.start()
    try:
        started = time.perf_counter()
        stats = await produce(generate(config), producer, usage_topic, support_topic, rate=1000)
        elapsed = time.perf_counter() - started
    finally:
        await producer.stop()
    assert stats.sent == 300
    assert 0.25 <= elapsed < 5.0
