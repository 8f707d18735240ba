"""The hold-back reads aiokafka's position of a partition from its internal state (its
public `position()` waits for one being reset): this holds that reading to the client
actually installed, through the real broker."""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, TopicPartition

from healthscore.service.holdback import delivered_position
from tests.utils.harness import make_producer, make_topics


async def test_the_delivered_position_is_aiokafkas_position(kafka_bootstrap: str) -> None:
    topics = await make_topics(kafka_bootstrap, partitions=1)
    producer = await make_producer(kafka_bootstrap)
    try:
        for n in range(5):
            await producer.send_and_wait(topics.usage, b"{}", key=str(n).encode())
    finally:
        await producer.stop()
    tp = TopicPartition(topics.usage, 0)
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([tp])
        consumer.seek(tp, 2)
        assert delivered_position(consumer, tp) == 2 == await consumer.position(tp)
        fetched = 0
        for _ in range(50):
            batch = await consumer.getmany(tp, timeout_ms=200)
            fetched += sum(len(records) for records in batch.values())
            if fetched >= 3:
                break
        assert fetched == 3
        assert delivered_position(consumer, tp) == 5 == await consumer.position(tp)
        assert consumer.highwater(tp) == 5
    finally:
        await consumer.stop()
