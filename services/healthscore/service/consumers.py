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

from healthscore.core.alignment import AlignmentView
from healthscore.errors import OffsetGap
from healthscore.service.ingest.decode import Decoded, RawRecord, Rejection
from healthscore.service.ingest.pipeline import BatchOutcome, BatchPipeline
from healthscore.service.stopping import pause_unless_stopped
from healthscore.store.offsets import stored_offsets

log = structlog.get_logger(__name__)

ConsumerGetter = Callable[[], Any]
Key = tuple[str, int]
TrueEnds = Callable[[list[Key]], Awaitable[dict[Key, int]]]
Item = Decoded | Rejection


def to_raw(record: Any) -> RawRecord:
    return RawRecord(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=record.key,
        value=record.value,
        timestamp_ms=record.timestamp,
        headers=tuple(record.headers or ()),
        corrupt=getattr(record, "corrupt", None),
    )


def to_raw_position(record: Any) -> RawRecord:
    """Only where a record is (for seeking back when even `to_raw` failed)."""
    return RawRecord(
        topic=record.topic, partition=record.partition, offset=record.offset, key=None, value=None
    )


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
        true_ends: TrueEnds | None = None,
        on_refused: Callable[[Key, str | None], None] | None = None,
    ) -> None:
        self._pool = pool
        self._group = group
        self._consumer = consumer
        self._on_change = on_change
        self._true_ends = true_ends
        self._on_refused = on_refused
        self.on_revoked: Callable[[set[TopicPartition]], None] | None = None
        self.on_positioned: Callable[[TopicPartition, int], None] | None = None
        self.assigned: set[TopicPartition] = set()
        # partitions whose stored offset lies outside the log, with why: not consumed
        self.refused: dict[Key, str] = {}

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self.assigned -= set(revoked)
        for tp in revoked:
            was_refused = self.refused.pop((tp.topic, tp.partition), None) is not None
            if was_refused and self._on_refused is not None:
                self._on_refused((tp.topic, tp.partition), None)
        if self.on_revoked is not None:
            self.on_revoked(set(revoked))
        if self._on_change and revoked:
            self._on_change("revoked", len(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        consumer = self._consumer()
        async with self._pool.acquire() as conn:
            stored = await stored_offsets(conn, self._group)
        unknown = [tp for tp in assigned if (tp.topic, tp.partition) not in stored]
        # an explicit offset, not seek_to_beginning: that one is applied lazily,
        # after a fetch already in flight has delivered records twice
        beginnings = await consumer.beginning_offsets(unknown) if unknown else {}
        outside = await self._outside_the_log(consumer, assigned, stored)
        for tp in assigned:
            key = (tp.topic, tp.partition)
            if key in outside:
                self._refuse(consumer, tp, outside[key])
                continue
            offset = stored.get(key)
            if offset is None:
                offset = beginnings[tp]
            consumer.seek(tp, offset)
            if self.on_positioned is not None:
                self.on_positioned(tp, offset)
        self.assigned |= set(assigned)
        log.info(
            "partitions_assigned",
            partitions=sorted(f"{tp.topic}:{tp.partition}" for tp in assigned),
        )
        if self._on_change and assigned:
            self._on_change("assigned", len(assigned))

    async def _outside_the_log(
        self, consumer: Any, assigned: set[TopicPartition], stored: dict[Key, int]
    ) -> dict[Key, str]:
        """Partitions whose stored offset the log cannot continue from.

        Above the high watermark: the topic was recreated (or the database
        belongs to another cluster); the client would silently restart at the
        log's beginning and skip everything below the stored offset. Below the
        log start: records were deleted before they were applied. Either way a
        person decides (`healthscore offsets-reset`), not the consumer.
        """
        known = [tp for tp in assigned if (tp.topic, tp.partition) in stored]
        if not known:
            return {}
        starts = await consumer.beginning_offsets(known)
        ends = await consumer.end_offsets(known)
        above = [tp for tp in known if stored[(tp.topic, tp.partition)] > ends[tp]]
        if above and self._true_ends is not None:
            # ListOffsets(latest) can answer low on some brokers: confirm from a fetch
            true = await self._true_ends([(tp.topic, tp.partition) for tp in above])
            for tp in above:
                ends[tp] = max(ends[tp], true.get((tp.topic, tp.partition), ends[tp]))
        outside: dict[Key, str] = {}
        for tp in known:
            offset = stored[(tp.topic, tp.partition)]
            if offset > ends[tp]:
                outside[(tp.topic, tp.partition)] = (
                    f"stored next offset {offset} is above the high watermark {ends[tp]}"
                )
            elif offset < starts[tp]:
                outside[(tp.topic, tp.partition)] = (
                    f"stored next offset {offset} is below the log start {starts[tp]}: "
                    f"records {offset}..{starts[tp] - 1} were deleted before being applied"
                )
        return outside

    def _refuse(self, consumer: Any, tp: TopicPartition, why: str) -> None:
        consumer.pause(tp)
        key = (tp.topic, tp.partition)
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


class BatchHandler:
    """What the FastStream subscriber calls with each batch of records."""

    def __init__(
        self,
        pipeline: BatchPipeline,
        consumer: ConsumerGetter,
        on_outcome: Callable[[BatchOutcome, float], Awaitable[None] | None] | None = None,
        retry_backoff: tuple[float, float] = (0.2, 5.0),
        on_failure: Callable[[BaseException], None] | None = None,
        max_alignment_wait: float = 2.0,
        live_lag_records: int = 0,
        after_batch: Callable[[], None] | None = None,
        on_gap: Callable[[OffsetGap], None] | None = None,
    ) -> None:
        self._pipeline = pipeline
        self._consumer = consumer
        self._on_outcome = on_outcome
        self._backoff_min, self._backoff_max = retry_backoff
        self._backoff = self._backoff_min
        self._on_failure = on_failure
        self._frontiers: dict[Key, float] = {}
        self._positions: dict[Key, int] = {}
        # records fetched but held back by the event-time alignment, per
        # partition in offset order; those partitions are paused meanwhile
        self._held: dict[Key, list[Item]] = {}
        self._lock = asyncio.Lock()
        self._last_run = time.monotonic()
        # where each partition was positioned on assignment (set by the listener)
        self.start_positions: dict[Key, int] = {}
        self._blocked_since: float | None = None
        self.max_alignment_wait = max_alignment_wait
        self._live_lag = live_lag_records
        self.failures = 0
        self._after_batch = after_batch
        self._on_gap = on_gap
        # offsets this consumer was explicitly sought to and has not yet applied
        # a batch from: a fetch from there may legitimately start later
        self._sought: dict[Key, int] = {}

    async def __call__(self, records: Sequence[Any]) -> None:
        async with self._lock:
            raw: list[RawRecord] = []
            try:
                raw = [to_raw(r) for r in records]
                await self._run(raw)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # nothing escapes to the framework: the records are fetched again
                log.exception("batch_handler_failed", error=type(exc).__name__)
                await self._rewind(raw or [to_raw_position(r) for r in records], exc)
            if self._after_batch is not None:
                # between batches, while no batch's objects are alive
                self._after_batch()

    async def drain_held(self, stop: asyncio.Event, idle: float = 0.05) -> None:
        """Apply held-back records when no new fetch comes to do it.

        A partition that was behind may have caught up (no more records will
        arrive to trigger a batch), which releases what the others hold.
        """
        while not stop.is_set():
            await pause_unless_stopped(stop, idle)
            if self._held and time.monotonic() - self._last_run >= idle:
                async with self._lock:
                    await self._run([])

    def positioned(self, tp: TopicPartition, offset: int) -> None:
        """The listener positioned `tp` at `offset` on assignment."""
        key = (tp.topic, tp.partition)
        self.start_positions[key] = offset
        self._sought[key] = offset
        self._positions.pop(key, None)
        self._frontiers.pop(key, None)

    def forget(self, partitions: set[TopicPartition]) -> None:
        """Partitions revoked: their held records belong to the next owner now."""
        for tp in partitions:
            self.start_positions.pop((tp.topic, tp.partition), None)
            self._held.pop((tp.topic, tp.partition), None)
            self._frontiers.pop((tp.topic, tp.partition), None)
            self._positions.pop((tp.topic, tp.partition), None)
            self._sought.pop((tp.topic, tp.partition), None)

    async def _run(self, raw: list[RawRecord]) -> None:
        self._last_run = time.monotonic()
        consumer = self._consumer()
        assigned = {(tp.topic, tp.partition) for tp in consumer.assignment()}
        for key in [k for k in self._held if k not in assigned]:
            del self._held[key]
        started = time.perf_counter()
        items = self._merge_with_held(raw)
        decode_ms = round((time.perf_counter() - started) * 1000, 1)
        if not items:
            return
        first = items[0].record
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(
            batch_first=f"{first.topic}:{first.partition}:{first.offset}",
            batch_records=len(items),
        )
        view: AlignmentView | None = self._alignment_view(consumer)
        if (
            self._blocked_since is not None
            and time.monotonic() - self._blocked_since > self.max_alignment_wait
        ):
            # a partition that should arrive does not (a broker problem): do not
            # let it stall the others for longer than this
            view = None
        try:
            outcome = await self._pipeline.process_items(items, view, dict(self._sought))
        except asyncio.CancelledError:
            raise
        except OffsetGap as gap:
            await self._rewind(
                [i.record for i in items], gap, {(gap.topic, gap.partition): gap.stored}
            )
            return
        except Exception as exc:
            # Never skip: a batch that did not commit is fetched again. Transient
            # faults (Postgres restarting, broker paused) heal by themselves; a
            # bug blocks the partition loudly rather than losing its events.
            await self._rewind([i.record for i in items], exc)
            return
        self._backoff = self._backoff_min
        for key in outcome.next_offsets:
            self._sought.pop(key, None)
        duration = time.perf_counter() - started
        outcome.timings_ms["decode"] = decode_ms
        self._remember(consumer, outcome, items)
        if outcome.records == 0 and outcome.held_from:
            if self._blocked_since is None:
                self._blocked_since = time.monotonic()
        else:
            self._blocked_since = None
        await self._commit_to_kafka(outcome)
        if self._on_outcome is not None and outcome.records:
            result = self._on_outcome(outcome, duration)
            if result is not None:
                await result

    def _merge_with_held(self, raw: list[RawRecord]) -> list[Item]:
        """Held records first, then the fetched ones decoded.

        A fetched record at or below a held one is a repeat (a paused partition
        is fetched again from its position when resumed) and is not decoded again.
        """
        if not self._held:
            return self._pipeline.decode(raw)
        merged = [item for held in self._held.values() for item in held]
        last_held = {key: held[-1].record.offset for key, held in self._held.items()}
        fresh = [
            record
            for record in raw
            if record.offset > last_held.get((record.topic, record.partition), -1)
        ]
        merged.extend(self._pipeline.decode(fresh))
        return merged

    def _alignment_view(self, consumer: Any) -> AlignmentView:
        assigned = {(tp.topic, tp.partition): tp for tp in consumer.assignment()}
        high: dict[Key, int] = {}
        for key, tp in assigned.items():
            mark = consumer.highwater(tp)
            if mark is not None:
                high[key] = mark
        positions = {k: v for k, v in self.start_positions.items() if k in assigned}
        positions.update({k: v for k, v in self._positions.items() if k in assigned})
        return AlignmentView(
            frontiers={k: v for k, v in self._frontiers.items() if k in assigned},
            high_watermarks=high,
            positions=positions,
            assigned=frozenset(assigned),
            live_lag_records=self._live_lag,
        )

    def _remember(self, consumer: Any, outcome: BatchOutcome, items: list[Item]) -> None:
        """Keep frontiers and positions; hold back (and pause) what was not applied."""
        for key, frontier in outcome.frontiers.items():
            self._frontiers[key] = max(self._frontiers.get(key, frontier), frontier)
        for key, offset in outcome.next_offsets.items():
            self._positions[key] = offset
        held: dict[Key, list[Item]] = {}
        for item in items:
            key = (item.record.topic, item.record.partition)
            start = outcome.held_from.get(key)
            if start is not None and item.record.offset >= start:
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

    async def _rewind(
        self,
        raw: list[RawRecord],
        exc: BaseException,
        stored: dict[Key, int] | None = None,
    ) -> None:
        """The batch did not commit: fetch it again (after a pause, unless a gap).

        A gap is not a failure to back off from: the partition is sought back
        to its stored offset (`stored`) and the batch is fetched again at once.
        """
        gap = isinstance(exc, OffsetGap)
        if gap:
            assert isinstance(exc, OffsetGap)
            if self._on_gap is not None:
                self._on_gap(exc)
        else:
            self.failures += 1
            if self._on_failure is not None:
                self._on_failure(exc)
        first: dict[tuple[str, int], int] = {}
        for record in raw:
            tp = (record.topic, record.partition)
            first[tp] = min(first.get(tp, record.offset), record.offset)
        first.update(stored or {})
        consumer = self._consumer()
        paused = [TopicPartition(*k) for k in self._held]
        self._held = {}
        for (topic, partition), offset in first.items():
            tp = TopicPartition(topic, partition)
            if tp in consumer.assignment():
                consumer.seek(tp, offset)
                self._sought[(topic, partition)] = offset
        resumable = [tp for tp in paused if tp in consumer.assignment()]
        if resumable:
            consumer.resume(*resumable)
        if gap:
            log.warning("offset_gap_sought_back", message=str(exc), records=len(raw))
            return
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
