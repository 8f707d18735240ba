"""Topic provisioning for the embedded broker and first runs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiokafka.admin import NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code

from healthscore.config import Settings
from healthscore.service.kafka_clients import KafkaConnection


def service_topics(settings: Settings) -> list[str]:
    return [
        *settings.input_topics,
        *settings.dlq_topics.values(),
        settings.alert_topic,
        settings.health_topic,
    ]


COMPACTED = {"cleanup.policy": "compact"}

THIRTY_DAYS_MS = str(30 * 24 * 3600 * 1000)


def topic_configs(settings: Settings) -> dict[str, dict[str, str]]:
    """The configs `deploy/compose/create-topics.sh` (the deployment's topics job) gives
    each topic, min.insync.replicas aside: what `serve` creates a missing topic with.

    The inputs are kept forever (a replay rebuilds from them, and alert ids are
    deterministic only as far as it can); dead letters and alerts 30 days; the
    compacted health feed keeps a tombstone (an erasure's one signal to the alerts'
    consumers) as long as the alerts it follows.
    """
    configs = {
        topic: {"cleanup.policy": "delete", "retention.ms": "-1", "max.message.bytes": "524288"}
        for topic in settings.input_topics
    }
    for topic in settings.dlq_topics.values():
        configs[topic] = {
            "cleanup.policy": "delete",
            "retention.ms": THIRTY_DAYS_MS,
            "max.message.bytes": "2097152",
        }
    configs[settings.alert_topic] = {"cleanup.policy": "delete", "retention.ms": THIRTY_DAYS_MS}
    configs[settings.health_topic] = {
        **COMPACTED,
        "min.compaction.lag.ms": "60000",
        "delete.retention.ms": THIRTY_DAYS_MS,
    }
    return configs


def new_topics(
    names: list[str],
    partitions: int,
    replication_factor: int,
    configs: Mapping[str, Mapping[str, str]] | None = None,
) -> list[NewTopic]:
    configs = configs or {}
    return [
        NewTopic(name, partitions, replication_factor, topic_configs=dict(configs.get(name, {})))
        for name in names
    ]


async def ensure_topics(
    kafka: KafkaConnection,
    topics: list[str],
    partitions: int,
    replication_factor: int = 1,
    configs: Mapping[str, Mapping[str, str]] | None = None,
) -> None:
    """Create the missing ones of `topics`, each with its `configs`; existing topics
    are left as they are."""
    admin = kafka.admin()
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in topics if t not in existing]
        if missing:
            response = await admin.create_topics(
                new_topics(missing, partitions, replication_factor, configs)
            )
            raise_topic_errors(response)
    finally:
        await admin.close()


def raise_topic_errors(response: Any) -> None:
    """The first per-topic error of a CreateTopics response, raised.

    aiokafka returns them in the response instead of raising: a replication
    factor above the number of brokers would otherwise pass silently and the
    service would run against topics that do not exist. A topic that already
    exists (another process created it first) is no error.
    """
    for topic, code, *message in response.topic_errors:
        if code not in (0, TopicAlreadyExistsError.errno):
            detail = message[0] if message and message[0] else ""
            raise for_code(code)(f"creating topic {topic}: {detail}".rstrip(": "))
