"""The hold-back buffer: records the event-time alignment did not apply yet.

The alignment (`core.alignment`) cuts each batch at a stream time; what lies
beyond the cut in a partition is held back here, in offset order, and the
partition is paused, so the consumer does not fetch past it meanwhile. The
next batch applies the held records first (`merge`), and whatever it holds in
turn replaces them (`keep`). What the alignment needs to know beyond one
batch lives here too: each partition's newest event time fetched (its
frontier), the next offset to apply (its position) and the high watermarks
of the consumer's last fetches.

A partition that is revoked takes its held records with it (`forget`): the
next owner fetches them again from the stored offset. A batch that fails
releases everything held (`release`): the consumer is sought back and fetches
it all again.

The buffer calls the consumer it is handed (assignment, high watermarks,
pause, resume) and keys everything else by `PartitionKey`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from aiokafka import TopicPartition

from healthscore.core.alignment import AlignmentView
from healthscore.core.partitions import PartitionKey
from healthscore.service.ingest.decode import Decoded, RawRecord, Rejection
from healthscore.service.ingest.pipeline import BatchOutcome

Item = Decoded | Rejection
Decode = Callable[[Sequence[RawRecord]], list[Item]]


class PausingConsumer(Protocol):
    """The consumer methods the buffer uses (aiokafka's `AIOKafkaConsumer` has them)."""

    def assignment(self) -> set[TopicPartition]: ...

    def highwater(self, partition: TopicPartition) -> int | None: ...

    def last_stable_offset(self, partition: TopicPartition) -> int | None: ...

    def pause(self, *partitions: TopicPartition) -> None: ...

    def paused(self) -> set[TopicPartition]: ...

    def resume(self, *partitions: TopicPartition) -> None: ...


def fetchable_end(consumer: PausingConsumer, tp: TopicPartition) -> int | None:
    """Where what the consumer can fetch of `tp` ends, as of its last fetch: the high
    watermark, or the last stable offset below it. Reading committed records, a
    transaction left open holds back its records and every one after them until it
    ends: the partition has delivered all it can (aiokafka reports -1 when reading
    uncommitted records)."""
    high = consumer.highwater(tp)
    stable = consumer.last_stable_offset(tp)
    if high is None or stable is None or stable < 0:
        return high
    return min(high, stable)


def assigned_keys(consumer: PausingConsumer) -> set[PartitionKey]:
    return {(tp.topic, tp.partition) for tp in consumer.assignment()}


class HoldBack:
    def __init__(
        self,
        decode: Decode,
        live_lag_records: int = 0,
        max_alignment_wait: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        always_aligned: frozenset[str] = frozenset(),
    ) -> None:
        self._decode = decode
        self._live_lag = live_lag_records
        # topics never applied as live traffic (the profiles: see core.alignment)
        self.always_aligned = always_aligned
        # a partition that should arrive and does not (a broker problem) stalls the
        # others at most this long: then a batch is applied unaligned
        self.max_alignment_wait = max_alignment_wait
        self._clock = clock
        # held records per partition, in offset order; those partitions are paused
        self._held: dict[PartitionKey, list[Item]] = {}
        self._frontiers: dict[PartitionKey, float] = {}
        self._positions: dict[PartitionKey, int] = {}
        # where each partition was positioned on assignment
        self.start_positions: dict[PartitionKey, int] = {}
        self._blocked_since: float | None = None
        self._last_batch = clock()
        self._high: dict[PartitionKey, int] = {}
        self._last_kept = clock()
        # records applied per second, over the last batches (0: not measured yet)
        self._apply_rate = 0.0

    @property
    def holding(self) -> bool:
        return bool(self._held)

    def held(self) -> dict[PartitionKey, list[int]]:
        """The held offsets per partition (for tests and logs)."""
        return {key: [item.record.offset for item in items] for key, items in self._held.items()}

    def positioned(self, key: PartitionKey, offset: int) -> None:
        """The partition was positioned at `offset` on assignment."""
        self.start_positions[key] = offset
        self._positions.pop(key, None)
        self._frontiers.pop(key, None)

    def reassigned(self, consumer: PausingConsumer, keys: Iterable[PartitionKey]) -> None:
        """The partitions are assigned and about to be sought to their stored offsets.

        aiokafka fetches a newly assigned partition (from Kafka's committed offset)
        while the assignment callback still runs, so a batch may have held records of
        it: fetched from a position the consumer no longer reads from, they are dropped
        (fetched again from the seek) and their partition resumed.
        """
        dropped = [key for key in keys if self._held.pop(key, None) is not None]
        assignment = consumer.assignment()
        resumable = [TopicPartition(*k) for k in dropped if TopicPartition(*k) in assignment]
        if resumable:
            consumer.resume(*resumable)

    def forget(self, keys: Iterable[PartitionKey]) -> None:
        """Partitions revoked: their held records belong to the next owner now."""
        for key in keys:
            self.start_positions.pop(key, None)
            self._held.pop(key, None)
            self._frontiers.pop(key, None)
            self._positions.pop(key, None)

    def due(self, idle: float) -> bool:
        """Records are held and no batch ran for `idle` seconds: apply them without one.

        A partition that was behind may have caught up (no more records will
        arrive to trigger a batch), which releases what the others hold.
        """
        return bool(self._held) and self._clock() - self._last_batch >= idle

    def merge(self, consumer: PausingConsumer, fetched: Sequence[RawRecord]) -> list[Item]:
        """Held records first, then the fetched ones decoded.

        A fetched record at or below a held one is a repeat (a paused partition
        is fetched again from its position when resumed) and is not decoded again.
        Held records of partitions no longer assigned are dropped.
        """
        self._last_batch = self._clock()
        if self._held:
            assigned = assigned_keys(consumer)
            for key in [k for k in self._held if k not in assigned]:
                del self._held[key]
        if not self._held:
            return self._decode(fetched)
        merged = [item for held in self._held.values() for item in held]
        last_held = {key: held[-1].record.offset for key, held in self._held.items()}
        fresh = [
            record
            for record in fetched
            if record.offset > last_held.get((record.topic, record.partition), -1)
        ]
        merged.extend(self._decode(fresh))
        return merged

    def view(self, consumer: PausingConsumer) -> AlignmentView | None:
        """What the alignment knows beyond the batch; None: apply the batch unaligned.

        None once batches have held records back and applied none of the partitions
        being aligned (live traffic does not count) for longer than
        `max_alignment_wait`: a partition that should arrive does not.

        A partition paused by someone else (refused on assignment: see
        `kafka_offsets`) is not read, so it is not waited for.
        """
        blocked = self._blocked_since
        if blocked is not None and self._clock() - blocked > self.max_alignment_wait:
            return None
        paused = consumer.paused()
        assigned = {
            (tp.topic, tp.partition): tp
            for tp in consumer.assignment()
            if tp not in paused or (tp.topic, tp.partition) in self._held
        }
        high: dict[PartitionKey, int] = {}
        for key, tp in assigned.items():
            mark = fetchable_end(consumer, tp)
            if mark is not None:
                high[key] = mark
        self._high = high
        positions = {k: v for k, v in self.start_positions.items() if k in assigned}
        positions.update({k: v for k, v in self._positions.items() if k in assigned})
        return AlignmentView(
            frontiers={k: v for k, v in self._frontiers.items() if k in assigned},
            high_watermarks=high,
            positions=positions,
            assigned=frozenset(assigned),
            live_lag_records=self._live_lag,
            always_aligned=self.always_aligned,
        )

    def keep(self, consumer: PausingConsumer, outcome: BatchOutcome, items: list[Item]) -> None:
        """After a committed batch: keep frontiers and positions, hold back (and
        pause) what it did not apply, resume what is no longer held."""
        now = self._clock()
        if now > self._last_kept and outcome.records:
            rate = outcome.records / (now - self._last_kept)
            self._apply_rate = rate if not self._apply_rate else 0.5 * (self._apply_rate + rate)
        self._last_kept = now
        for key, frontier in outcome.frontiers.items():
            self._frontiers[key] = max(self._frontiers.get(key, frontier), frontier)
        for key, offset in outcome.next_offsets.items():
            self._positions[key] = offset
        held: dict[PartitionKey, list[Item]] = {}
        held_from = outcome.held_from
        # nothing held back (most batches, and every live one): no record to look at
        for item in items if held_from else ():
            record = item.record
            key = (record.topic, record.partition)
            start = held_from.get(key)
            if start is not None and record.offset >= start:
                held.setdefault(key, []).append(item)
        for key, records in held.items():
            records.sort(key=lambda i: i.record.offset)
            self._positions[key] = records[0].record.offset
        assignment = consumer.assignment()
        to_pause = [TopicPartition(*k) for k in held if TopicPartition(*k) in assignment]
        to_resume = [
            TopicPartition(*k)
            for k in self._held
            if k not in held and TopicPartition(*k) in assignment
        ]
        self._held = held
        if to_pause:
            consumer.pause(*to_pause)
        if to_resume:
            consumer.resume(*to_resume)
        # the wait for a partition that does not deliver runs while nothing but live
        # traffic is applied: live records apply every batch, whatever the others wait for
        aligned_progress = any(key not in outcome.live for key in outcome.next_offsets)
        if outcome.held_from and not aligned_progress:
            if self._blocked_since is None:
                self._blocked_since = self._clock()
        else:
            self._blocked_since = None

    def _behind(self, idle: float) -> int:
        """Records between the positions and the high watermarks of the partitions
        further behind than the live lag, as of the last batch (0 when it ended
        `idle` seconds ago or more)."""
        if self._clock() - self._last_kept >= idle:
            return 0
        lags = (
            high - self._positions.get(key, self.start_positions.get(key, high))
            for key, high in self._high.items()
        )
        return sum(lag for lag in lags if lag > self._live_lag)

    def catching_up(self, idle: float = 5.0) -> bool:
        """Some partition is further behind its high watermark than live traffic is,
        as of the last batch (which ended less than `idle` seconds ago)."""
        return self._behind(idle) > 0

    def catch_up_lag(self, idle: float = 5.0) -> float:
        """While catching up: the seconds it takes at the recent pace to apply what the
        partitions behind hold; 0 for live traffic.

        A record produced now reaches the state that much later, so the read model
        already shows the newest events that late: a projector waiting as long on
        top at most doubles it, whatever the records' timestamps say.
        """
        if self._apply_rate <= 0:
            return 0.0
        return self._behind(idle) / self._apply_rate

    def release(self, consumer: PausingConsumer) -> None:
        """A batch failed: drop what is held (it is fetched again) and resume its partitions."""
        paused = [TopicPartition(*k) for k in self._held]
        self._held = {}
        assignment = consumer.assignment()
        resumable = [tp for tp in paused if tp in assignment]
        if resumable:
            consumer.resume(*resumable)
