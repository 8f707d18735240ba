"""True end offsets and consumer lag, robust to a stale ListOffsets answer.

Lag is the partition's high watermark minus the next offset the service
stored in PostgreSQL (its real progress; Kafka's committed offsets trail it).
The embedded broker may answer ListOffsets(latest) with the base offset of
the last record batch + 1 instead of the high watermark, so the high
watermark is taken from a Fetch response instead: seek just before the
reported end and fetch; every Fetch response carries the true high watermark.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiokafka import TopicPartition

from healthscore.core.partitions import PartitionKey
from healthscore.service.kafka_clients import KafkaConnection
from healthscore.service.kafka_salvage import is_unreadable_record_error
from healthscore.store import Connection
from healthscore.store.offsets import stored_offsets


@dataclass(frozen=True, slots=True)
class PartitionLag:
    topic: str
    partition: int
    high_watermark: int
    stored_offset: int | None

    @property
    def lag(self) -> int:
        return max(0, self.high_watermark - (self.stored_offset or 0))


class HighWatermarkProbe:
    """A group-less consumer that reads high watermarks from Fetch responses."""

    def __init__(self, kafka: KafkaConnection) -> None:
        self._consumer = kafka.consumer(
            enable_auto_commit=False,
            group_id=None,
            fetch_max_wait_ms=50,
            max_partition_fetch_bytes=64 * 1024,
        )
        self._started = False

    async def __aenter__(self) -> HighWatermarkProbe:
        try:
            await self._consumer.start()
        except BaseException:
            # no __aexit__ follows a failed enter: close it here, or every failed
            # attempt (a gauge refresh while the brokers are down) leaves one open
            await self._consumer.stop()
            raise
        self._started = True
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._consumer.stop()

    async def partitions(self, topics: list[str]) -> list[PartitionKey]:
        result: list[PartitionKey] = []
        for topic in topics:
            parts = self._consumer.partitions_for_topic(topic)
            if parts is None:
                await self._consumer._client.force_metadata_update()
                parts = self._consumer.partitions_for_topic(topic) or set()
            result.extend((topic, p) for p in sorted(parts))
        return result

    async def high_watermarks(
        self, partitions: list[PartitionKey], timeout: float = 5.0
    ) -> dict[PartitionKey, int]:
        fetched, reported = await self.fetched_high_watermarks(partitions, timeout)
        # a partition no fetch answered within the timeout: the broker's own answer
        return {**reported, **fetched}

    async def fetched_high_watermarks(
        self, partitions: list[PartitionKey], timeout: float = 5.0
    ) -> tuple[dict[PartitionKey, int], dict[PartitionKey, int]]:
        """The high watermarks Fetch responses carried within `timeout` (never below
        the broker's ListOffsets answer), and that answer for every partition."""
        consumer = self._consumer
        tps = [TopicPartition(t, p) for t, p in partitions]
        if not tps:
            return {}, {}
        consumer.assign(tps)
        reported: dict[Any, int] = await consumer.end_offsets(tps)
        for tp in tps:
            consumer.seek(tp, max(0, reported[tp] - 1))
        result: dict[PartitionKey, int] = {}
        deadline = time.monotonic() + timeout
        while len(result) < len(tps) and time.monotonic() < deadline:
            try:
                await consumer.getmany(*tps, timeout_ms=100, max_records=1)
            except Exception as exc:
                # only the high watermark is wanted, and it came with the fetch
                # response: a record aiokafka cannot parse must not hide it
                if not is_unreadable_record_error(exc):
                    raise
            for tp in tps:
                hw = consumer.highwater(tp)
                if hw is not None:
                    result[(tp.topic, tp.partition)] = max(hw, reported[tp])
            await asyncio.sleep(0)
        return result, {(tp.topic, tp.partition): offset for tp, offset in reported.items()}

    async def log_starts(self, partitions: list[PartitionKey]) -> dict[PartitionKey, int]:
        """The first offset still in each partition's log (the log start offset)."""
        tps = [TopicPartition(t, p) for t, p in partitions]
        if not tps:
            return {}
        starts: dict[Any, int] = await self._consumer.beginning_offsets(tps)
        return {(tp.topic, tp.partition): offset for tp, offset in starts.items()}


class UnreadPartitions:
    """Input partitions the service has stored no progress for whose log holds records.

    Such a partition is behind before its first batch (its replica is starting, or
    slow): its records may lie below the event time every other partition reached,
    so the silence sweep must wait for it. A partition whose log is empty does not
    hold anything back: what it receives later is sent later.
    """

    def __init__(
        self,
        kafka: KafkaConnection,
        topics: list[str],
        known: Callable[[list[str]], list[PartitionKey] | None] = lambda _: None,
    ) -> None:
        self._kafka = kafka
        self._topics = topics
        # the topics' partitions from metadata the process already holds (None: ask)
        self._known = known

    async def __call__(self, started: frozenset[PartitionKey]) -> list[PartitionKey]:
        partitions = self._known(self._topics)
        if partitions is not None and started.issuperset(partitions):
            return []  # the usual case, without a request to the brokers
        async with HighWatermarkProbe(self._kafka) as probe:
            if partitions is None:
                partitions = await probe.partitions(self._topics)
            missing = [p for p in partitions if p not in started]
            if not missing:
                return []
            ends = await probe.high_watermarks(missing)
            starts = await probe.log_starts(missing)
        return [p for p in missing if ends[p] > starts[p]]


async def consumer_lag(
    kafka: KafkaConnection, conn: Connection, group: str, topics: list[str]
) -> list[PartitionLag]:
    async with HighWatermarkProbe(kafka) as probe:
        partitions = await probe.partitions(topics)
        watermarks = await probe.high_watermarks(partitions)
    stored = await stored_offsets(conn, group)
    return [
        PartitionLag(
            topic, partition, watermarks[(topic, partition)], stored.get((topic, partition))
        )
        for topic, partition in partitions
    ]
