"""The health feed's partition choice is the default partitioner's, key for key."""

from __future__ import annotations

import uuid

from aiokafka.partitioner import DefaultPartitioner

from healthscore.service.keyed_batches import partition_for


def test_partition_for_picks_what_the_default_partitioner_picks() -> None:
    default = DefaultPartitioner()
    keys = [str(uuid.UUID(int=i * 7919 + 1)).encode() for i in range(3000)] + [b"", b"x"]
    for count in (1, 2, 3, 7, 12):
        partitions = list(range(count))
        for key in keys * 2:  # the second pass hits the kept hashes
            assert partition_for(key, partitions) == default(key, partitions, partitions)
    # partitions need not start at 0
    assert partition_for(b"org", [4, 9]) == default(b"org", [4, 9], [4, 9])
