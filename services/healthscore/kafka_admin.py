"""Topic provisioning for the embedded broker and first runs."""

from __future__ import annotations

import contextlib

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from healthscore.config import Settings


def service_topics(settings: Settings) -> list[str]:
    return [
        settings.usage_topic,
        settings.support_topic,
        *settings.dlq_topics.values(),
        settings.alert_topic,
        settings.health_topic,
    ]


COMPACTED = {"cleanup.policy": "compact"}


async def ensure_topics(
    bootstrap: str, topics: list[str], partitions: int, compacted: frozenset[str] = frozenset()
) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in topics if t not in existing]
        if missing:
            new = [
                NewTopic(t, partitions, 1, topic_configs=COMPACTED if t in compacted else {})
                for t in missing
            ]
            # another process may create them first
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(new)
    finally:
        await admin.close()
