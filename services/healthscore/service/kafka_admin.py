"""Topic provisioning for the embedded broker and first runs."""

from __future__ import annotations

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


def new_topics(
    names: list[str], partitions: int, replication_factor: int, compacted: frozenset[str]
) -> list[NewTopic]:
    return [
        NewTopic(
            name,
            partitions,
            replication_factor,
            topic_configs=COMPACTED if name in compacted else {},
        )
        for name in names
    ]


async def ensure_topics(
    kafka: KafkaConnection,
    topics: list[str],
    partitions: int,
    replication_factor: int = 1,
    compacted: frozenset[str] = frozenset(),
) -> None:
    """Create the missing ones of `topics` (existing topics are left as they are)."""
    admin = kafka.admin()
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in topics if t not in existing]
        if missing:
            response = await admin.create_topics(
                new_topics(missing, partitions, replication_factor, compacted)
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
