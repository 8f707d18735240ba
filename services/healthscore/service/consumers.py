"""What the FastStream subscriber calls with each batch: decode, delegate, recover.

The handler turns aiokafka records into `RawRecord`s and hands them, after the
records the event-time alignment held back (`holdback`), to the
`BatchPipeline`. A batch that does not commit is fetched again: the consumer
is sought back (`kafka_offsets`) and, unless it was only a gap, the handler
waits before the retry, doubling the wait while batches keep failing. Every
log line of a batch carries its first record and size (structlog contextvars).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog

from healthscore.core.partitions import PartitionKey
from healthscore.errors import OffsetGap
from healthscore.service.holdback import HoldBack
from healthscore.service.ingest.decode import RawRecord
from healthscore.service.ingest.pipeline import BatchOutcome, BatchPipeline, PartlyCommitted
from healthscore.service.kafka_offsets import KafkaOffsets

log = structlog.get_logger(__name__)

# how long held-back records wait for a batch before `drain_held` applies them
HELD_IDLE_SECONDS = 0.05


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
        skipped_to=getattr(record, "skipped_to", None),
    )


def to_raw_position(record: Any) -> RawRecord:
    """Only where a record is (for seeking back when even `to_raw` failed)."""
    return RawRecord(
        topic=record.topic, partition=record.partition, offset=record.offset, key=None, value=None
    )


class BatchHandler:
    def __init__(
        self,
        pipeline: BatchPipeline,
        offsets: KafkaOffsets,
        holdback: HoldBack,
        on_outcome: Callable[[BatchOutcome, float], Awaitable[None] | None] | None = None,
        retry_backoff: tuple[float, float] = (0.2, 5.0),
        on_failure: Callable[[BaseException], None] | None = None,
        after_batch: Callable[[int], None] | None = None,
        on_gap: Callable[[OffsetGap], None] | None = None,
        min_interval: tuple[float, int] = (0.0, 0),
    ) -> None:
        self._pipeline = pipeline
        self._offsets = offsets
        self._holdback = holdback
        self._on_outcome = on_outcome
        self._backoff_min, self._backoff_max = retry_backoff
        self._backoff = self._backoff_min
        self._on_failure = on_failure
        self._after_batch = after_batch
        self._on_gap = on_gap
        # (seconds, full batch size): see `_pace`
        self._min_interval, self._full_batch = min_interval
        self._lock = asyncio.Lock()
        self.failures = 0
        # since when batches have failed without one committing (time.monotonic; None:
        # the last one committed), how many, and the last one's error: readiness reads them
        self.failing_since: float | None = None
        self.failing_batches = 0
        self.last_failure = ""
        self.last_failed_at = 0.0

    async def __call__(self, records: Sequence[Any]) -> None:
        started = time.monotonic()
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
                self._after_batch(len(records))
        await self._pace(started, len(records))

    async def _pace(self, started: float, records: int) -> None:
        """After a batch that was not full, wait until `min_interval` seconds after it
        began before the next fetch is taken: live traffic then comes in fewer, larger
        batches. Every batch costs a transaction's round trips whatever its size, and
        at a few events a batch that cost, not the events, keeps the machine busy (the
        consumer-side counterpart of a producer's linger.ms). A full batch (catching
        up) goes on at once."""
        if self._min_interval <= 0 or records >= self._full_batch:
            return
        left = self._min_interval - (time.monotonic() - started)
        if left > 0:
            await asyncio.sleep(left)

    async def drain_held(self) -> None:
        """Apply held-back records when no new fetch comes to do it (a periodic step)."""
        if self._holdback.due(HELD_IDLE_SECONDS):
            async with self._lock:
                await self._run([])

    async def _run(self, raw: list[RawRecord]) -> None:
        consumer = self._offsets.consumer
        started = time.perf_counter()
        items = self._holdback.merge(consumer, raw)
        decode_ms = round((time.perf_counter() - started) * 1000, 1)
        if not items:
            return
        first = items[0].record
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(
            batch_first=f"{first.topic}:{first.partition}:{first.offset}",
            batch_records=len(items),
        )
        view = self._holdback.view(consumer)
        try:
            try:
                outcome = await self._pipeline.process_items(
                    items, view, dict(self._offsets.sought)
                )
            except PartlyCommitted as partly:
                # parts committed before the rest failed: logged and counted as they
                # stand (fetched again, they are skipped as applied), then the failure
                await self._report(partly.committed, time.perf_counter() - started)
                raise partly.cause from None
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
        self._offsets.applied(outcome.next_offsets)
        duration = time.perf_counter() - started
        outcome.timings_ms["decode"] = decode_ms
        self._holdback.keep(consumer, outcome, items)
        await self._offsets.commit(outcome.next_offsets)
        self.failing_since, self.failing_batches = None, 0
        await self._report(outcome, duration)

    async def _report(self, outcome: BatchOutcome, duration: float) -> None:
        # a batch of stand-ins only (transaction markers) committed offsets too: logged
        if self._on_outcome is not None and (outcome.records or outcome.passed_over):
            result = self._on_outcome(outcome, duration)
            if result is not None:
                await result

    async def _rewind(
        self,
        raw: list[RawRecord],
        exc: BaseException,
        stored: dict[PartitionKey, int] | None = None,
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
            if self.failing_since is None:
                self.failing_since = time.monotonic()
            self.failing_batches += 1
            self.last_failure = f"{type(exc).__name__}: {str(exc)[:200]}"
            self.last_failed_at = time.monotonic()
            if self._on_failure is not None:
                self._on_failure(exc)
        first: dict[PartitionKey, int] = {}
        for record in raw:
            key = (record.topic, record.partition)
            first[key] = min(first.get(key, record.offset), record.offset)
        first.update(stored or {})
        consumer = self._offsets.consumer
        self._offsets.rewind(first)
        self._holdback.release(consumer)
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
