"""FastStream batch subscribers: decode the Kafka batch, delegate, recover.

The handler is thin: it turns aiokafka records into `RawRecord`s and hands
them to the `BatchPipeline`. What lives here is the Kafka side of the
offset protocol: seek to the database's offsets on assignment, seek back
when a batch fails, and commit to Kafka (for lag tooling only) afterwards.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg
import structlog
from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from healthscore.ingest.alignment import AlignmentView
from healthscore.ingest.decode import RawRecord
from healthscore.ingest.pipeline import BatchOutcome, BatchPipeline
from healthscore.store import sql

log = structlog.get_logger(__name__)

ConsumerGetter = Callable[[], Any]


def to_raw(record: Any) -> RawRecord:
    return RawRecord(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=record.key,
        value=record.value,
        timestamp_ms=record.timestamp,
        headers=tuple(record.headers or ()),
    )


async def stored_offsets(pool: asyncpg.Pool[Any], group: str) -> dict[tuple[str, int], int]:
    async with pool.acquire() as conn:
        rows = await conn.fetch(sql.READ_OFFSETS, group)
    return {(r["topic"], r["partition"]): int(r["next_offset"]) for r in rows}


class SeekToStoredOffsets(ConsumerRebalanceListener):  # type: ignore[misc]
    """On assignment, resume each partition where the database says we are.

    A partition the database has never seen starts at the beginning of the
    log, whatever Kafka's committed offset says: the database is the truth,
    so replaying into an empty database re-reads everything.
    """

    def __init__(
        self,
        pool: asyncpg.Pool[Any],
        group: str,
        consumer: ConsumerGetter,
        on_change: Callable[[str, int], None] | None = None,
    ) -> None:
        self._pool = pool
        self._group = group
        self._consumer = consumer
        self._on_change = on_change
        self.assigned: set[TopicPartition] = set()

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self.assigned -= set(revoked)
        if self._on_change and revoked:
            self._on_change("revoked", len(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        consumer = self._consumer()
        stored = await stored_offsets(self._pool, self._group)
        for tp in assigned:
            offset = stored.get((tp.topic, tp.partition))
            if offset is None:
                await consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, offset)
        self.assigned |= set(assigned)
        log.info(
            "partitions_assigned",
            partitions=sorted(f"{tp.topic}:{tp.partition}" for tp in assigned),
        )
        if self._on_change and assigned:
            self._on_change("assigned", len(assigned))


class BatchHandler:
    """What the FastStream subscriber calls with each batch of records."""

    def __init__(
        self,
        pipeline: BatchPipeline,
        consumer: ConsumerGetter,
        on_outcome: Callable[[BatchOutcome, float], Awaitable[None] | None] | None = None,
        retry_backoff: tuple[float, float] = (0.2, 5.0),
        on_failure: Callable[[BaseException], None] | None = None,
    ) -> None:
        self._pipeline = pipeline
        self._consumer = consumer
        self._on_outcome = on_outcome
        self._backoff_min, self._backoff_max = retry_backoff
        self._backoff = self._backoff_min
        self._on_failure = on_failure
        self._frontiers: dict[tuple[str, int], float] = {}
        self._positions: dict[tuple[str, int], int] = {}
        self.failures = 0

    async def __call__(self, records: Sequence[Any]) -> None:
        if not records:
            return
        raw = [to_raw(r) for r in records]
        started = time.perf_counter()
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(
            batch_first=f"{raw[0].topic}:{raw[0].partition}:{raw[0].offset}",
            batch_records=len(raw),
        )
        consumer = self._consumer()
        try:
            outcome = await self._pipeline.process(raw, self._alignment_view(consumer))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Never skip: a batch that did not commit is fetched again. Transient
            # faults (Postgres restarting, broker paused) heal by themselves; a
            # bug blocks the partition loudly rather than losing its events.
            await self._rewind(raw, exc)
            return
        self._backoff = self._backoff_min
        duration = time.perf_counter() - started
        self._remember(consumer, outcome)
        if outcome.records == 0 and outcome.held_from:
            # everything waits for a partition whose records are not fetched yet
            await asyncio.sleep(0.01)
        await self._commit_to_kafka(outcome)
        if self._on_outcome is not None:
            result = self._on_outcome(outcome, duration)
            if result is not None:
                await result

    def _alignment_view(self, consumer: Any) -> AlignmentView:
        assigned = {(tp.topic, tp.partition): tp for tp in consumer.assignment()}
        high: dict[tuple[str, int], int] = {}
        for key, tp in assigned.items():
            mark = consumer.highwater(tp)
            if mark is not None:
                high[key] = mark
        return AlignmentView(
            frontiers={k: v for k, v in self._frontiers.items() if k in assigned},
            high_watermarks=high,
            positions={k: v for k, v in self._positions.items() if k in assigned},
        )

    def _remember(self, consumer: Any, outcome: BatchOutcome) -> None:
        """Keep each partition's frontier and position; seek to held-back records."""
        for key, frontier in outcome.frontiers.items():
            self._frontiers[key] = max(self._frontiers.get(key, frontier), frontier)
        for key, offset in outcome.next_offsets.items():
            self._positions[key] = offset
        for (topic, partition), offset in outcome.held_from.items():
            tp = TopicPartition(topic, partition)
            if tp in consumer.assignment():
                consumer.seek(tp, offset)
                self._positions[(topic, partition)] = offset

    async def _rewind(self, raw: list[RawRecord], exc: BaseException) -> None:
        """The batch did not commit: fetch it again after a pause."""
        self.failures += 1
        if self._on_failure is not None:
            self._on_failure(exc)
        first: dict[tuple[str, int], int] = {}
        for record in raw:
            tp = (record.topic, record.partition)
            first[tp] = min(first.get(tp, record.offset), record.offset)
        consumer = self._consumer()
        for (topic, partition), offset in first.items():
            tp = TopicPartition(topic, partition)
            if tp in consumer.assignment():
                consumer.seek(tp, offset)
        log.warning(
            "batch_failed_will_retry",
            error=type(exc).__name__,
            message=str(exc)[:300],
            retry_in_s=round(self._backoff, 2),
            records=len(raw),
        )
        await asyncio.sleep(self._backoff)
        self._backoff = min(self._backoff * 2, self._backoff_max)

    async def _commit_to_kafka(self, outcome: BatchOutcome) -> None:
        consumer = self._consumer()
        offsets = {
            TopicPartition(topic, partition): offset
            for (topic, partition), offset in outcome.next_offsets.items()
            if TopicPartition(topic, partition) in consumer.assignment()
        }
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except KafkaError as exc:
            # Only lag tooling reads these; the database holds the real progress.
            log.info("kafka_commit_skipped", error=type(exc).__name__)
