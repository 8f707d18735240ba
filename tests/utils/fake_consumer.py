"""An in-memory Kafka consumer for unit tests of the offset protocol and the hold-back
buffer: only the methods they call (assignment, seek, position, pause/resume,
high watermarks, log bounds, commit), no broker."""

from __future__ import annotations

from collections.abc import Iterable

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from healthscore.core.partitions import PartitionKey


class FakeConsumer:
    def __init__(
        self,
        assigned: Iterable[PartitionKey] = (),
        highwater: dict[PartitionKey, int] | None = None,
        log_starts: dict[PartitionKey, int] | None = None,
        log_ends: dict[PartitionKey, int] | None = None,
        commit_error: KafkaError | None = None,
        stable: dict[PartitionKey, int] | None = None,
    ) -> None:
        self._assigned = {TopicPartition(*key) for key in assigned}
        self.highwaters = {TopicPartition(*k): v for k, v in (highwater or {}).items()}
        # last stable offsets (reading committed records); none: not reported
        self.stable = {TopicPartition(*k): v for k, v in (stable or {}).items()}
        self.log_starts = {TopicPartition(*k): v for k, v in (log_starts or {}).items()}
        self.log_ends = {TopicPartition(*k): v for k, v in (log_ends or {}).items()}
        self.positions: dict[PartitionKey, int] = {}
        self.paused_keys: set[PartitionKey] = set()
        self.seeks: list[tuple[PartitionKey, int]] = []
        self.commits: list[dict[PartitionKey, int]] = []
        self.commit_error = commit_error

    def assign(self, keys: Iterable[PartitionKey]) -> None:
        self._assigned = {TopicPartition(*key) for key in keys}

    def assignment(self) -> set[TopicPartition]:
        return set(self._assigned)

    def highwater(self, partition: TopicPartition) -> int | None:
        return self.highwaters.get(partition)

    def last_stable_offset(self, partition: TopicPartition) -> int | None:
        return self.stable.get(partition)

    def seek(self, partition: TopicPartition, offset: int) -> None:
        key = (partition.topic, partition.partition)
        self.positions[key] = offset
        self.seeks.append((key, offset))

    async def position(self, partition: TopicPartition) -> int:
        return self.positions[(partition.topic, partition.partition)]

    def pause(self, *partitions: TopicPartition) -> None:
        self.paused_keys.update((tp.topic, tp.partition) for tp in partitions)

    def resume(self, *partitions: TopicPartition) -> None:
        self.paused_keys.difference_update((tp.topic, tp.partition) for tp in partitions)

    def paused(self) -> set[TopicPartition]:
        return {TopicPartition(*key) for key in self.paused_keys}

    async def beginning_offsets(
        self, partitions: list[TopicPartition]
    ) -> dict[TopicPartition, int]:
        return {tp: self.log_starts.get(tp, 0) for tp in partitions}

    async def end_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self.log_ends.get(tp, 0) for tp in partitions}

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        if self.commit_error is not None:
            raise self.commit_error
        self.commits.append({(tp.topic, tp.partition): o for tp, o in offsets.items()})
