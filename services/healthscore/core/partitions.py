"""The name of a Kafka partition in the service's own code: a (topic, partition) pair.

aiokafka's `TopicPartition` appears only where a Kafka client is called; everything
else (the alignment, the pipeline, the stored offsets, lag) keys by `PartitionKey`.
"""

from __future__ import annotations

PartitionKey = tuple[str, int]
