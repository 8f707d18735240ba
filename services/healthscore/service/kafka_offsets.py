"""The Kafka side of the offset protocol: PostgreSQL holds the truth, the consumer follows.

A batch's transaction stores each partition's next offset with its effects
(`ingest.pipeline`). This module makes the consumer read from there:

- on assignment, seek each partition to its stored next offset; a partition
  the database has never seen starts at the beginning of the log, whatever
  Kafka's committed offset says (replaying into an empty database re-reads
  everything); a stored offset outside the log is refused, not guessed at;
- after a batch that did not commit, seek back to where it started (`rewind`),
  or to the stored offset over a gap: records are fetched again, never skipped;
- after a committed batch, commit to Kafka as well, for lag tooling only: at most every
  KAFKA_COMMIT_INTERVAL_MS (a periodic `flush`), and a revoked partition's offsets
  before it goes, so that a batch does not wait for a broker round trip that nothing
  of the service reads.

The consumer is FastStream's, built when the broker starts: the salvaging
consumer builder hands it over (`consumer_built`, see `kafka_salvage`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import asyncpg
import structlog
from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from healthscore.core.partitions import PartitionKey
from healthscore.service.holdback import HoldBack
from healthscore.service.periodic import pause_unless_stopped
from healthscore.store.offsets import stored_offsets

log = structlog.get_logger(__name__)

# the first and the longest wait between tries of an assignment that failed
ASSIGNMENT_RETRY_SECONDS = (0.2, 5.0)

TrueEnds = Callable[[list[PartitionKey]], Awaitable[dict[PartitionKey, int]]]


class ConsumerNotStarted(RuntimeError):
    """The consumer is used before FastStream built it (the broker has not started)."""


def key_of(tp: TopicPartition) -> PartitionKey:
    return (tp.topic, tp.partition)


class KafkaOffsets(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    def __init__(
        self,
        pool: asyncpg.Pool[Any],
        group: str,
        holdback: HoldBack,
        on_change: Callable[[str, int], None] | None = None,
        true_ends: TrueEnds | None = None,
        on_refused: Callable[[PartitionKey, str | None], None] | None = None,
        commit_to_kafka: bool = True,
        commit_interval: float = 0.0,
        stop: asyncio.Event | None = None,
    ) -> None:
        self._pool = pool
        # set when the service stops: an assignment waiting for PostgreSQL gives up
        # (the consumer's close waits for this callback, and revokes the partitions)
        self._stop = stop or asyncio.Event()
        self._group = group
        self._holdback = holdback
        self._on_change = on_change
        self._true_ends = true_ends
        self._on_refused = on_refused
        self._commit_to_kafka = commit_to_kafka
        # seconds between commits to Kafka (`flush`, a periodic step); 0: every batch
        self._commit_interval = commit_interval
        # the latest next offsets PostgreSQL committed, not yet committed to Kafka
        self._pending: dict[PartitionKey, int] = {}
        self._consumer: Any = None
        self.assigned: set[PartitionKey] = set()
        # partitions whose stored offset lies outside the log, with why: not consumed
        self.refused: dict[PartitionKey, str] = {}
        # offsets the consumer was explicitly sought to and has not yet applied a
        # batch from: a fetch from there may legitimately start later (the gap guard)
        self.sought: dict[PartitionKey, int] = {}

    def consumer_built(self, consumer: Any) -> None:
        """FastStream built the subscriber's consumer (at broker start)."""
        self._consumer = consumer

    @property
    def consumer(self) -> Any:
        if self._consumer is None:
            raise ConsumerNotStarted("the subscriber's consumer is built when the broker starts")
        return self._consumer

    def partitions_of(self, topics: list[str]) -> list[PartitionKey] | None:
        """The topics' partitions from the consumer's metadata (None before it has it)."""
        if self._consumer is None:
            return None
        result: list[PartitionKey] = []
        for topic in topics:
            parts = self._consumer.partitions_for_topic(topic)
            if not parts:
                return None
            result.extend((topic, p) for p in sorted(parts))
        return result

    # -- rebalances

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        keys = {key_of(tp) for tp in revoked}
        # still ours while this runs: what PostgreSQL committed for them goes to Kafka
        await self.flush(keys)
        self.assigned -= keys
        for key in keys:
            self.sought.pop(key, None)
            was_refused = self.refused.pop(key, None) is not None
            if was_refused and self._on_refused is not None:
                self._on_refused(key, None)
        self._holdback.forget(keys)
        if self._on_change and revoked:
            self._on_change("revoked", len(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        """Seek the assigned partitions to their stored offsets; retried until it can.

        aiokafka logs an exception of this callback and goes on with the assignment:
        the partitions would be consumed from Kafka's committed offsets and left out
        of `assigned` (the replica unready, its Kafka commits dropped, a stored offset
        outside the log never refused) until the next rebalance. A rebalance while
        PostgreSQL restarts or the broker is away does that; the callback waits it
        out, as a failed batch does (the group drops this member meanwhile if the
        wait outlasts a rebalance: it rejoins after), until the service stops.
        """
        delay, longest = ASSIGNMENT_RETRY_SECONDS
        while not self._stop.is_set():
            try:
                await self._assign(assigned)
                return
            except (
                OSError,
                TimeoutError,
                asyncpg.PostgresError,
                asyncpg.InterfaceError,
                KafkaError,
            ) as exc:
                log.warning(
                    "partition_assignment_failed_will_retry",
                    error=type(exc).__name__,
                    message=str(exc)[:300],
                    retry_in_s=round(delay, 2),
                    partitions=len(assigned),
                )
            await pause_unless_stopped(self._stop, delay)
            delay = min(delay * 2, longest)

    async def _assign(self, assigned: set[TopicPartition]) -> None:
        consumer = self.consumer
        async with self._pool.acquire() as conn:
            stored = await stored_offsets(conn, self._group)
        unknown = [tp for tp in assigned if key_of(tp) not in stored]
        # an explicit offset, not seek_to_beginning: that one is applied lazily,
        # after a fetch already in flight has delivered records twice
        beginnings = await consumer.beginning_offsets(unknown) if unknown else {}
        outside = await self._outside_the_log(consumer, assigned, stored)
        # before the seeks: records held from an earlier position would go first (and
        # pass the gap guard once sought), skipping those between
        self._holdback.reassigned(consumer, {key_of(tp) for tp in assigned})
        for tp in assigned:
            key = key_of(tp)
            if key in outside:
                self._refuse(consumer, tp, outside[key])
                continue
            offset = stored.get(key)
            if offset is None:
                offset = beginnings[tp]
            consumer.seek(tp, offset)
            self.sought[key] = offset
            self._holdback.positioned(key, offset)
        self.assigned |= {key_of(tp) for tp in assigned}
        log.info(
            "partitions_assigned",
            partitions=sorted(f"{tp.topic}:{tp.partition}" for tp in assigned),
        )
        if self._on_change and assigned:
            self._on_change("assigned", len(assigned))

    async def _outside_the_log(
        self, consumer: Any, assigned: set[TopicPartition], stored: dict[PartitionKey, int]
    ) -> dict[PartitionKey, str]:
        """Partitions whose stored offset the log cannot continue from.

        Above the high watermark: the topic was recreated (or the database
        belongs to another cluster); the client would silently restart at the
        log's beginning and skip everything below the stored offset. Below the
        log start: records were deleted before they were applied. Either way a
        person decides (`healthscore offsets-reset`), not the consumer.
        """
        known = [tp for tp in assigned if key_of(tp) in stored]
        if not known:
            return {}
        starts = await consumer.beginning_offsets(known)
        ends = await consumer.end_offsets(known)
        above = [tp for tp in known if stored[key_of(tp)] > ends[tp]]
        if above and self._true_ends is not None:
            # ListOffsets(latest) can answer low on some brokers: confirm from a fetch
            true = await self._true_ends([key_of(tp) for tp in above])
            for tp in above:
                ends[tp] = max(ends[tp], true.get(key_of(tp), ends[tp]))
        outside: dict[PartitionKey, str] = {}
        for tp in known:
            offset = stored[key_of(tp)]
            if offset > ends[tp]:
                outside[key_of(tp)] = (
                    f"stored next offset {offset} is above the high watermark {ends[tp]}"
                )
            elif offset < starts[tp]:
                outside[key_of(tp)] = (
                    f"stored next offset {offset} is below the log start {starts[tp]}: "
                    f"records {offset}..{starts[tp] - 1} were deleted before being applied"
                )
        return outside

    def refuse_beyond_the_log(self, beyond: Mapping[PartitionKey, tuple[int, int]]) -> None:
        """Refuse the assigned partitions among `beyond` (stored next offset, high
        watermark), found while consumed: the topic was recreated under the running
        service. The client waits at its old position for records that never come (or,
        on a broker answering OffsetOutOfRange, restarts at the log start and skips what
        lies below the stored offset as applied); a person decides, as on assignment."""
        if self._consumer is None:
            return
        assignment = self._consumer.assignment()
        for key, (stored, high) in sorted(beyond.items()):
            tp = TopicPartition(*key)
            if key in self.refused or key not in self.assigned or tp not in assignment:
                continue
            self._refuse(
                self._consumer,
                tp,
                f"stored next offset {stored} is above the high watermark {high} "
                "(found while consuming: the topic was recreated?)",
            )

    def _refuse(self, consumer: Any, tp: TopicPartition, why: str) -> None:
        consumer.pause(tp)
        key = key_of(tp)
        self.refused[key] = why
        if self._on_refused is not None:
            self._on_refused(key, why)
        log.error(
            "partition_refused",
            topic=tp.topic,
            partition=tp.partition,
            reason=why,
            action="not consuming it; see docs/operations.md, 'Stored offset outside the log'",
        )

    # -- batches

    def applied(self, next_offsets: Mapping[PartitionKey, int]) -> None:
        """A batch committed these partitions' next offsets: no longer freshly sought."""
        for key in next_offsets:
            self.sought.pop(key, None)

    def rewind(self, offsets: Mapping[PartitionKey, int]) -> None:
        """Seek the assigned partitions among `offsets` back there (a batch did not commit)."""
        consumer = self.consumer
        assignment = consumer.assignment()
        for key, offset in offsets.items():
            tp = TopicPartition(*key)
            if tp in assignment:
                consumer.seek(tp, offset)
                self.sought[key] = offset

    async def commit(self, next_offsets: Mapping[PartitionKey, int]) -> None:
        """Commit to Kafka what PostgreSQL committed (only lag tooling reads it): at once
        without a commit interval, else at the next `flush`."""
        if not self._commit_to_kafka:
            return
        self._pending.update(next_offsets)
        if self._commit_interval <= 0:
            await self.flush()

    async def flush(self, keys: set[PartitionKey] | None = None) -> None:
        """Commit the pending offsets (of `keys` only, when given) of the partitions
        still assigned; the others are dropped (their new owner commits its own)."""
        if not self._pending:
            return
        consumer = self.consumer
        assignment = consumer.assignment()
        offsets: dict[TopicPartition, int] = {}
        for key in list(self._pending) if keys is None else keys & self._pending.keys():
            offset = self._pending.pop(key)
            if (tp := TopicPartition(*key)) in assignment:
                offsets[tp] = offset
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except KafkaError as exc:
            # Only lag tooling reads these; the database holds the real progress.
            log.info("kafka_commit_skipped", error=type(exc).__name__)
