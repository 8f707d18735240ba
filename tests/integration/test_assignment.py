"""Partition assignment in a real consumer group on the real broker: the process that
owns an organization's usage partition owns its support and profile partitions, at a
replica count the partition count is no multiple of; and a member of an older version
(round-robin only) still joins the group during a rolling upgrade."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack

import pytest

from healthscore.core.partitions import PartitionKey
from healthscore.service import broker as broker_module
from healthscore.service.app import Components
from healthscore.service.broker import ASSIGNORS
from tests.utils.harness import Topics, make_topics, running_service, service_settings

PARTITIONS = 4  # three members: round-robin over the 12 topic-partitions splits them
# heartbeats every second: members that join or leave rebalance the group sooner
SESSION_MS = 3000


async def _settled(services: Sequence[Components], total: int, timeout: float = 60.0) -> None:
    """Until every member holds partitions and together they hold each once."""
    deadline = time.monotonic() + timeout
    while True:
        held = [service.offsets.assigned for service in services]
        every = [key for keys in held for key in keys]
        if all(held) and len(every) == len(set(every)) == total:
            return
        assert time.monotonic() < deadline, f"the group never settled: {held}"
        await asyncio.sleep(0.2)


def _by_topic(keys: set[PartitionKey], topics: Topics) -> list[set[int]]:
    return [
        {partition for topic, partition in keys if topic == name}
        for name in (topics.usage, topics.support, topics.profile)
    ]


async def test_each_process_owns_the_same_partitions_of_every_input_topic(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    topics = await make_topics(kafka_bootstrap, partitions=PARTITIONS)
    settings = service_settings(
        migrated_database, kafka_bootstrap, topics, kafka_session_timeout_ms=SESSION_MS
    )
    async with AsyncExitStack() as stack:
        services = [await stack.enter_async_context(running_service(settings)) for _ in range(3)]
        await _settled(services, 3 * PARTITIONS)
        for service in services:
            usage, support, profile = _by_topic(service.offsets.assigned, topics)
            assert usage and usage == support == profile, service.offsets.assigned


async def test_a_member_with_round_robin_only_still_joins_the_group(
    migrated_database: str, kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rolling upgrade: the group falls back to the protocol every member has."""
    assert ASSIGNORS[-1].name == "roundrobin"
    topics = await make_topics(kafka_bootstrap, partitions=PARTITIONS)
    settings = service_settings(
        migrated_database, kafka_bootstrap, topics, kafka_session_timeout_ms=SESSION_MS
    )
    async with AsyncExitStack() as stack:
        monkeypatch.setattr(broker_module, "ASSIGNORS", ASSIGNORS[-1:])
        older = await stack.enter_async_context(running_service(settings))
        monkeypatch.setattr(broker_module, "ASSIGNORS", ASSIGNORS)
        newer = await stack.enter_async_context(running_service(settings))
        await _settled([older, newer], 3 * PARTITIONS)
