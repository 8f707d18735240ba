"""Dead-letter publishing: the original bytes, unchanged, with headers saying why."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from healthscore.service.ingest.decode import Rejection


class RecordProducer(Protocol):
    """The slice of a Kafka producer the DLQ needs (aiokafka's fits)."""

    async def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        headers: list[tuple[str, bytes | None]] | None = None,
    ) -> asyncio.Future[Any]: ...


def dlq_headers(rejection: Rejection) -> list[tuple[str, bytes | None]]:
    record = rejection.record
    headers: list[tuple[str, bytes | None]] = [
        ("x-error-reason", rejection.reason.encode()),
        ("x-error-detail", rejection.detail.encode()),
        ("x-source-topic", record.topic.encode()),
        ("x-source-partition", str(record.partition).encode()),
        ("x-source-offset", str(record.offset).encode()),
        ("x-rejected-at", datetime.now(UTC).isoformat().encode()),
    ]
    if record.timestamp_ms is not None:
        headers.append(("x-source-timestamp-ms", str(record.timestamp_ms).encode()))
    # keep the producer's own headers too, after ours; one named like ours (a dead
    # letter re-driven with its headers) is renamed, or a reader taking the last
    # (or the first) header of a name would read the old rejection as this one
    headers.extend(
        (ORIGINAL_PREFIX + name if name in OWN_HEADERS else name, value)
        for name, value in record.headers
    )
    return headers


OWN_HEADERS = frozenset(
    (
        "x-error-reason",
        "x-error-detail",
        "x-source-topic",
        "x-source-partition",
        "x-source-offset",
        "x-rejected-at",
        "x-source-timestamp-ms",
    )
)
"""The headers a dead letter is given (`dlq_headers`)."""

ORIGINAL_PREFIX = "x-original-"
"""Prefixed to a producer's header that is named like one of `OWN_HEADERS`."""


class DeadLetterQueue:
    def __init__(self, producer: RecordProducer, suffix: str) -> None:
        self._producer = producer
        self._suffix = suffix

    def topic_for(self, source_topic: str) -> str:
        return source_topic + self._suffix

    async def publish(self, rejections: Sequence[Rejection]) -> None:
        """Publish every rejection and wait for the broker's acks.

        Called inside the batch transaction, before it commits: if the process
        dies after this and before the commit, the batch is redone and the
        dead letters are sent again (at-least-once, identified by their
        source coordinates), but none is ever lost.
        """
        futures = []
        for rejection in rejections:
            record = rejection.record
            futures.append(
                await self._producer.send(
                    self.topic_for(record.topic),
                    value=record.value,
                    key=record.key,
                    headers=dlq_headers(rejection),
                )
            )
        # one wait for all acks, not a round trip per dead letter
        await asyncio.gather(*futures)
