"""Send many keyed records at once: one record batch per partition, not one call each.

aiokafka's `send` costs some 40 us of Python per record (metadata wait,
partitioner, accumulator, a future each); appending to a batch built per
partition costs about half. The partition is the one `send` would pick for the
key (the default partitioner: murmur2 of the key over the partitions sorted by
id, as Kafka's Java client does), so a compacted topic keeps each key on one
partition whichever way its records were sent. The hash of a key is kept (the same
organizations come back batch after batch, and aiokafka's murmur2 is pure Python).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from typing import Any, Protocol

from aiokafka.partitioner import murmur2


@functools.lru_cache(maxsize=1 << 16)
def _positive_hash(key: bytes) -> int:
    return int(murmur2(key)) & 0x7FFFFFFF


def partition_for(key: bytes, partitions: Sequence[int]) -> int:
    """The partition aiokafka's DefaultPartitioner picks for `key` (`partitions` sorted)."""
    return partitions[_positive_hash(key) % len(partitions)]


class BatchingProducer(Protocol):
    async def partitions_for(self, topic: str) -> Any: ...

    def create_batch(self) -> Any: ...

    async def send_batch(
        self, batch: Any, topic: str, *, partition: int
    ) -> asyncio.Future[Any]: ...

    async def send(
        self, topic: str, value: bytes | None = None, key: bytes | None = None
    ) -> asyncio.Future[Any]: ...


async def send_keyed(
    producer: BatchingProducer,
    topic: str,
    records: Sequence[tuple[bytes, bytes | None]],
    acks: list[asyncio.Future[Any]] | None = None,
) -> None:
    """Send (key, value) records (a None value: a tombstone) and wait until the broker
    acknowledged all of them.

    `acks` receives each send's future as it is made: a caller that stops waiting (a
    timeout) can still learn which of its records the broker took later, since the
    producer delivers what it was given whether or not anyone waits."""
    if not records:
        return
    partitions = sorted(await producer.partitions_for(topic))
    open_batches: dict[int, Any] = {}
    if acks is None:
        acks = []
    for key, value in records:
        partition = partition_for(key, partitions)
        batch = open_batches.get(partition)
        if batch is None:
            batch = open_batches[partition] = producer.create_batch()
        if batch.append(key=key, value=value, timestamp=None) is not None:
            continue
        # full: send it and start the partition's next one with this record
        acks.append(await producer.send_batch(batch, topic, partition=partition))
        batch = open_batches[partition] = producer.create_batch()
        if batch.append(key=key, value=value, timestamp=None) is None:
            # larger than a whole batch: alone, as `send` would (it sets its own limits)
            del open_batches[partition]
            acks.append(await producer.send(topic, value=value, key=key))
    for partition, batch in open_batches.items():
        acks.append(await producer.send_batch(batch, topic, partition=partition))
    # wait() leaves the sends' futures as they are when this wait is cancelled (gather
    # would cancel them, and no one could read their outcome)
    await asyncio.wait(acks)
    errors = [ack.exception() for ack in acks]
    for error in errors:
        if error is not None:
            raise error
