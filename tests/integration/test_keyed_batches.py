"""`send_keyed` puts each key where `send` would, in order, through the real broker.

The health feed is compacted by organization: if the batched path chose another
partition than aiokafka's `send` for a key, the topic would hold two latest
records for it. Batches are kept small here (max_batch_size 1 KiB) so that
partitions get several batches each, and one record is larger than a batch.
"""

from __future__ import annotations

import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from healthscore.service.keyed_batches import send_keyed


async def test_keyed_batches_land_where_send_puts_each_key(kafka_bootstrap: str) -> None:
    topic = f"keyed.{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=5, replication_factor=1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, enable_idempotence=False, max_batch_size=1024
    )
    await producer.start()
    keys = [str(uuid.uuid5(uuid.NAMESPACE_URL, f"keyed-{i}")).encode() for i in range(60)]
    try:
        # where aiokafka's own send puts each key
        expected: dict[bytes, int] = {}
        for key in keys:
            metadata = await (await producer.send(topic, value=b"probe", key=key))
            expected[key] = metadata.partition
        assert len(set(expected.values())) == 5
        # three records per key, in order; one of them larger than a whole batch
        records = [
            (key, b"x" * 4096 if (n, i) == (1, 7) else f"{n}:{i}".encode())
            for n in range(3)
            for i, key in enumerate(keys)
        ]
        await send_keyed(producer, topic, records)
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=None)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(5)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        seen: dict[bytes, list[tuple[int, bytes]]] = {}
        total = len(keys) + len(records)
        count = 0
        while count < total:
            batch = await consumer.getmany(timeout_ms=2000)
            assert batch, f"only {count} of {total} records arrived"
            for tp, messages in batch.items():
                for message in messages:
                    assert message.key is not None and message.value is not None
                    seen.setdefault(message.key, []).append((tp.partition, message.value))
                    count += 1
    finally:
        await consumer.stop()
    for i, key in enumerate(keys):
        partitions = {partition for partition, _ in seen[key]}
        assert partitions == {expected[key]}
        values = [value for _, value in seen[key]]
        big = b"x" * 4096 if i == 7 else b"1:%d" % i
        assert values == [b"probe", b"0:%d" % i, big, b"2:%d" % i]
