"""Topics the service creates get TOPIC_PARTITIONS and TOPIC_REPLICATION_FACTOR."""

from __future__ import annotations

import uuid

from aiokafka.errors import InvalidReplicationFactorError

from healthscore.service.kafka_admin import ensure_topics
from healthscore.service.kafka_clients import KafkaConnection


async def test_missing_topics_are_created_with_the_replication_factor(
    kafka_bootstrap: str,
) -> None:
    kafka = KafkaConnection(kafka_bootstrap)
    name = f"rf.{uuid.uuid4().hex[:10]}"
    admin = kafka.admin()
    await admin.start()
    try:
        brokers = len((await admin.describe_cluster())["brokers"])
        try:
            await ensure_topics(kafka, [name, name + ".c"], 3, 3, frozenset({name + ".c"}))
        except InvalidReplicationFactorError:
            # a real single-node Kafka refuses 3 replicas: the factor reached the
            # broker, and the refusal is raised instead of passing silently
            assert brokers < 3
            return
        described = {t["topic"]: t for t in await admin.describe_topics([name, name + ".c"])}
        for topic in (name, name + ".c"):
            partitions = described[topic]["partitions"]
            assert len(partitions) == 3
            assert {len(p["replicas"]) for p in partitions} == {3}
        # existing topics are left alone (and are no error)
        await ensure_topics(kafka, [name], 3, 3)
    finally:
        await admin.close()
