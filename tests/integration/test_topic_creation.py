"""Topics the service creates get TOPIC_PARTITIONS and TOPIC_REPLICATION_FACTOR."""

from __future__ import annotations

import uuid

from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import InvalidReplicationFactorError, KafkaError

from healthscore.config import Settings
from healthscore.service.kafka_admin import (
    COMPACTED,
    ensure_topics,
    service_topics,
    topic_configs,
)
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
            await ensure_topics(kafka, [name, name + ".c"], 3, 3, {name + ".c": COMPACTED})
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


async def test_missing_topics_get_the_topics_jobs_configs(kafka_bootstrap: str) -> None:
    # what deploy/compose/create-topics.sh gives them: inputs kept forever (replay),
    # alerts 30 days, and the health feed's tombstones (an erasure's signal) as long
    settings = Settings.model_construct(
        **{
            **Settings().model_dump(),
            **{
                name: f"{name}.{uuid.uuid4().hex[:8]}"
                for name in ("usage_topic", "support_topic", "profile_topic")
            },
            "alert_topic": f"alerts.{uuid.uuid4().hex[:8]}",
            "health_topic": f"health.{uuid.uuid4().hex[:8]}",
        }
    )
    kafka = KafkaConnection(kafka_bootstrap)
    wanted = topic_configs(settings)
    await ensure_topics(kafka, service_topics(settings), 1, configs=wanted)
    admin = kafka.admin()
    await admin.start()
    try:
        assert set(service_topics(settings)) <= set(await admin.list_topics())
        try:
            described = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, name) for name in wanted]
            )
        except KafkaError:
            return  # a broker without DescribeConfigs: created with them all the same
        for response in described:
            for resource in response.resources:
                name, entries = resource[3], resource[4]
                given = {entry[0]: entry[1] for entry in entries}
                for key, value in wanted[name].items():
                    if key in given:
                        assert given[key] == value, (name, key, given[key])
    finally:
        await admin.close()
