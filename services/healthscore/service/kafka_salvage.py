"""Get past Kafka records aiokafka cannot read, losing none of the readable ones.

A record aiokafka cannot parse (a header key that is not UTF-8, a batch that
fails its CRC, ...) makes `getmany` raise from inside its record iterator:
`CorruptRecordException` from the pure-Python reader, a bare
`UnicodeDecodeError` from the C extension the consumer uses by default. The
exception drops what that call had already drained (other partitions, and the
records of the same batch before the bad one), and every later fetch starting
anywhere in the batch fails the same way: FastStream's consume loop retries
(or restarts) forever, with its logging muted here, and the partition stalls.

`SalvagingConsumer` is the consumer FastStream builds for the service (see
`install_salvaging_consumer`). When `getmany` fails that way it

1. finds the partition and what the failed call had drained (`_failure_site`);
2. fetches the partition's bytes from its position with the consumer's own
   client (`fetch_partition_bytes`) and reads them with the tolerant `kafka_records`
   reader, from the position through the end of the first damaged batch;
3. returns those records (the readable ones as ordinary `ConsumerRecord`s, the
   unreadable ones marked `corrupt` with what failed, at which offset, and the
   key, value and headers that could be read) together with the drained ones,
   and seeks the partition past the damaged batch.

The caller (the batch handler) dead-letters the corrupt ones and commits their
offsets with the batch, like any rejected record. FastStream never sees the
exception. Every corrupt record is logged (`corrupt_record_salvaged`), counted
(`healthscore_corrupt_records_total`) and kept for readiness
(`CorruptRecordMonitor`).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka import errors as kafka_errors
from aiokafka.consumer.fetcher import Fetcher, PartitionRecords
from aiokafka.protocol.fetch import FetchRequest
from prometheus_client import Counter

from healthscore.service.kafka_records import (
    ParsedBatch,
    ParsedRecord,
    aborted_batches,
    parse_batches,
)

if TYPE_CHECKING:
    from faststream.kafka import KafkaBroker

log = structlog.get_logger(__name__)

Records = dict[TopicPartition, list[Any]]
READ_COMMITTED = 1
FETCH_MAX_WAIT_MS = 500
# a failure the salvage cannot reproduce is retried after this long, not in a hot loop
UNRESOLVED_BACKOFF_SECONDS = 1.0
# coordinates remembered so a record read again (a retried batch) is counted once
REMEMBERED = 10_000


@dataclass
class SalvagedRecord(ConsumerRecord):  # type: ignore[misc]  # aiokafka is untyped
    """A `ConsumerRecord` read by the salvage; `corrupt` says why it is not valid."""

    corrupt: str | None = None
    # set on a stand-in for offsets the client passed without handing over a record
    # (transaction markers): the next offset after them
    skipped_to: int | None = None


@dataclass(frozen=True, slots=True)
class CorruptRecordSeen:
    topic: str
    partition: int
    offset: int
    detail: str
    at: datetime

    def as_dict(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "detail": self.detail,
            "at": self.at.isoformat(),
        }


class CorruptRecordMonitor:
    """Logs, counts and remembers the corrupt records the salvage gets past.

    `describe()` and `check()` are for /readyz: the last corrupt record (where,
    what, when) and how many, and a readiness problem while one is recent.
    """

    def __init__(
        self,
        counter: Counter | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._counter = counter
        self._clock = clock
        self.total = 0
        self.last: CorruptRecordSeen | None = None
        # a failure the salvage could not locate or reproduce (None once it gets past one)
        self.unresolved: str | None = None
        self._counted: OrderedDict[tuple[str, int, int], None] = OrderedDict()

    def corrupt(self, topic: str, partition: int, record: ParsedRecord) -> None:
        assert record.corrupt is not None
        coordinates = (topic, partition, record.offset)
        repeat = coordinates in self._counted
        log.error(
            "corrupt_record_salvaged",
            topic=topic,
            partition=partition,
            offset=record.offset,
            detail=record.corrupt,
            key_bytes=None if record.key is None else len(record.key),
            value_bytes=None if record.value is None else len(record.value),
            repeat=repeat,
        )
        self.last = CorruptRecordSeen(
            topic,
            partition,
            record.offset,
            record.corrupt,
            datetime.fromtimestamp(self._clock(), UTC),
        )
        if repeat:
            return
        self.total += 1
        self._counted[coordinates] = None
        if len(self._counted) > REMEMBERED:
            self._counted.popitem(last=False)
        if self._counter is not None:
            self._counter.labels(topic).inc()

    def failed_to_salvage(self, why: str) -> None:
        self.unresolved = why
        log.error("corrupt_record_not_salvaged", detail=why)

    def describe(self) -> dict[str, Any]:
        return {
            "corrupt_records": self.total,
            "last": None if self.last is None else self.last.as_dict(),
            "unresolved": self.unresolved,
        }

    def stuck(self) -> str | None:
        """Why the consumer cannot get past an unreadable record, if it cannot."""
        if self.unresolved is None:
            return None
        return f"cannot get past an unreadable record: {self.unresolved}"

    async def check(self, recent_seconds: float = 300.0) -> str | None:
        """A problem while a corrupt record is recent or one is stuck."""
        if (stuck := self.stuck()) is not None:
            return stuck
        last = self.last
        if last is None:
            return None
        age = self._clock() - last.at.timestamp()
        if age > recent_seconds:
            return None
        return (
            f"corrupt record {last.topic}:{last.partition}:{last.offset} skipped "
            f"{age:.0f}s ago (dead-lettered): {last.detail[:300]}"
        )


@dataclass
class FailureSite:
    """Where in aiokafka a `getmany` failed."""

    partition: TopicPartition | None
    # the batch being read when it failed (base offset, next offset), if known
    batch: tuple[int, int] | None
    # records another partition had already handed over in the failed call
    drained: Records


_READERS = ("aiokafka/record/", "aiokafka/codec.py")
"""Where aiokafka reads fetched records: its record readers and the decompressors they
call. An error raised below them is a read failure too: a batch whose bytes fail to
decompress raises from the codec's library (Python's gzip module, cramjam's
`DecompressionError`), the reader's frame further up the traceback."""


def _failure_site(exc: BaseException) -> FailureSite | None:
    """Where aiokafka failed to read a fetched record; None for any other error.

    A read failure is a `CorruptRecordException`, or any error raised inside
    aiokafka's record readers (`aiokafka/record/`: the C reader raises a bare
    `UnicodeDecodeError` for a header key that is not UTF-8), or below them (in a
    decompressor: a batch whose compressed bytes are not).

    aiokafka internals, used here only: the exception carries neither the
    partition nor the records the call had drained from other partitions (their
    positions already moved past them); they exist only as locals of the frames
    `Fetcher.fetched_records` (`drained`) and `PartitionRecords._unpack_records`
    (`tp`, `next_batch`) on the traceback. tests/integration/test_corrupt_records.py
    fails if an aiokafka upgrade moves them; the partition is then None (and a
    `CorruptRecordException` still gets every partition tried).
    """
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    files = [frame.f_code.co_filename.replace("\\", "/") for frame in frames]
    reading = any(reader in name for name in files for reader in _READERS)
    if not reading and not isinstance(exc, kafka_errors.CorruptRecordException):
        return None
    site = FailureSite(None, None, {})
    for frame in frames:
        owner = frame.f_locals.get("self")
        if frame.f_code.co_name == "fetched_records" and isinstance(owner, Fetcher):
            drained = frame.f_locals.get("drained")
            if isinstance(drained, dict):
                site.drained = dict(drained)
        elif frame.f_code.co_name == "_unpack_records" and isinstance(owner, PartitionRecords):
            tp = frame.f_locals.get("tp")
            if isinstance(tp, TopicPartition):
                site.partition = tp
            batch = frame.f_locals.get("next_batch")
            if batch is not None:
                site.batch = (int(batch.base_offset), int(batch.next_offset))
    return site


def is_unreadable_record_error(exc: BaseException) -> bool:
    """`exc` is aiokafka failing to read a fetched record (not a broker or client error)."""
    return _failure_site(exc) is not None


async def fetch_partition_bytes(
    consumer: AIOKafkaConsumer,
    tp: TopicPartition,
    offset: int,
    max_bytes: int,
    isolation_level: int,
) -> bytes:
    """The record bytes of `tp` from `offset`, as the broker sends them.

    aiokafka internals: it has no public call for a partition's raw bytes, so
    one Fetch request goes through the consumer's own client (`_client`: same
    connections, security and negotiated protocol version).
    """
    client = consumer._client
    node_id = client.cluster.leader_for_partition(tp)
    if node_id is None or node_id < 0:
        await client.force_metadata_update()
        node_id = client.cluster.leader_for_partition(tp)
        if node_id is None or node_id < 0:
            raise kafka_errors.LeaderNotAvailableError(f"no leader for {tp}")
    # at least one byte (the batch that failed is there): a broker may answer a
    # zero-byte, zero-wait fetch with no partitions at all (tansu does)
    request = FetchRequest(
        FETCH_MAX_WAIT_MS,
        1,
        max_bytes,
        isolation_level,
        [(tp.topic, [(tp.partition, offset, max_bytes)])],
    )
    response = await client.send(node_id, request)
    for topic, partitions in response.topics:
        for partition, error_code, _highwater, *part_data in partitions:
            if (topic, partition) != (tp.topic, tp.partition):
                continue
            error = kafka_errors.for_code(error_code)
            if error is not kafka_errors.NoError:
                raise error(f"fetching {tp} at {offset}")
            return bytes(part_data[-1] or b"")
    raise kafka_errors.KafkaError(f"the fetch response has no data for {tp}")


def salvage_range(
    batches: Iterable[ParsedBatch],
    position: int,
    failed_batch: tuple[int, int] | None,
    aborted: Collection[int] = frozenset(),
) -> tuple[list[ParsedRecord], int] | None:
    """The records from `position` through the first damaged batch, and the offset after it.

    Where no batch reads as damaged (aiokafka failed on something this reader
    accepts), the batch aiokafka was reading ends the range instead. None when
    neither is among `batches`. The batches whose base offsets are in `aborted`
    (an aborted transaction's, for a reader of committed records) hand over nothing.
    """
    records: list[ParsedRecord] = []
    for batch in batches:
        if batch.next_offset <= position:
            continue
        if not batch.control and batch.base_offset not in aborted:
            records.extend(r for r in batch.records if r.offset >= position)
        if batch.damaged or (failed_batch is not None and batch.base_offset == failed_batch[0]):
            return records, batch.next_offset
    return None


# how long the stop of a start cut off may wait for the group request in flight
JOIN_GRACE_SECONDS = 5.0


class SalvagingConsumer(AIOKafkaConsumer):  # type: ignore[misc]  # aiokafka is untyped
    """An `AIOKafkaConsumer` whose `getmany` gets past records it cannot parse."""

    def __init__(self, *topics: str, monitor: CorruptRecordMonitor, **kwargs: Any) -> None:
        super().__init__(*topics, **kwargs)
        self._monitor = monitor
        self._salvage_fetch_bytes = int(kwargs.get("max_partition_fetch_bytes", 1024 * 1024))
        self._salvage_isolation = (
            READ_COMMITTED if kwargs.get("isolation_level") == "read_committed" else 0
        )
        self._key_deserializer_fn = kwargs.get("key_deserializer")
        self._value_deserializer_fn = kwargs.get("value_deserializer")
        # per partition: the next offset handed over (a record or a stand-in) or sought to
        self._handed_to: dict[TopicPartition, int] = {}
        self._started = False

    async def start(self) -> None:
        await super().start()
        self._started = True

    async def stop(self) -> None:
        """Stop; a start still waiting for its first assignment stops within seconds.

        aiokafka's stop lets the group coordinator finish the request in flight, and a
        start waits for its first assignment: a JoinGroup the coordinator holds (a
        group that does not form) held a SIGTERM during start-up for the request
        timeout (40 s). The stop is given `JOIN_GRACE_SECONDS` to end as aiokafka ends
        it: a join the coordinator answers completes and the consumer leaves the group
        it joined, where a join cut off would leave a member the coordinator waits for
        until its session times out, delaying the other replicas' rebalance. Past that,
        the client's connections are dropped until the stop ends (the stop has marked
        the coordinator closing, so it gives up instead of joining again). A consumer
        that has started stops as aiokafka stops it.
        """
        if self._started or self._closed:
            await super().stop()
            return
        stopping = asyncio.ensure_future(super().stop())
        done, _ = await asyncio.wait([stopping], timeout=JOIN_GRACE_SECONDS)
        if not done:
            log.warning("consumer_start_abandoned", seconds=JOIN_GRACE_SECONDS)
        while not done:
            # again until the stop ends: a connection being opened as they are dropped,
            # or a request the coordinator sends before it sees it is closing
            for connection in list(self._client._conns.values()):
                connection.close()
            done, _ = await asyncio.wait([stopping], timeout=0.05)
        await stopping

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> Records:
        try:
            result: Records = await super().getmany(
                *partitions, timeout_ms=timeout_ms, max_records=max_records
            )
        except Exception as exc:
            site = _failure_site(exc)
            if site is None:
                raise
            return await self._salvage(exc, site, partitions)
        return await self._with_skips(result)

    def seek(self, partition: TopicPartition, offset: int) -> None:
        super().seek(partition, offset)
        self._handed_to[partition] = offset

    async def _with_skips(self, result: Records) -> Records:
        """`result`, with a stand-in for the offsets of each partition that the client
        moved its position past without handing over a record for.

        aiokafka passes transaction markers (control batches) without a record, so a
        marker after a partition's last record left the stored offset one below the
        high watermark for good (a replay never ended; the partition never caught up),
        and a fetch that started after one looked like a gap. Read here, in the call
        that moved the position, the stand-in travels with the records, so the batch
        that stores their offsets stores the marker's too: between or after the call's
        records when passed within them (aiokafka iterated those batches itself), before them
        when passed ahead of the first (the previous call stopped at `max_records` or
        its fetch ended right before a marker). A move ahead of any record is believed
        only when the broker's bytes there hold nothing aiokafka hands over (markers, an
        aborted transaction's batches, what compaction left empty): an offset reset past
        deleted records is not a skip.
        """
        # every position read before any await: a seek meanwhile (a rebalance) must not
        # be taken for the client passing offsets
        # (partition, first offset passed, offset after them, position read)
        ahead: list[tuple[TopicPartition, int, int, int]] = []
        for tp in sorted(self.assignment()):
            records = result.get(tp)
            position = _delivered_position(self, tp)
            handed = self._handed_to.get(tp)
            if position is None:
                self._handed_to.pop(tp, None)
                continue
            self._handed_to[tp] = position
            if not records:
                if handed is not None and position > handed:
                    ahead.append((tp, handed, position, position))
                continue
            if handed is not None and handed < records[0].offset:
                ahead.append((tp, handed, records[0].offset, position))
            holes = records[-1].offset - records[0].offset + 1 != len(records)
            if holes or position > records[-1].offset + 1:
                result[tp] = _with_holes_filled(tp, records, end=position)
        for tp, start, end, position in ahead:
            if await self._only_markers(tp, start, end, position):
                result[tp] = [_stand_in(tp, start, end), *result.get(tp, [])]
        return result

    async def _only_markers(self, tp: TopicPartition, start: int, end: int, position: int) -> bool:
        """The log holds nothing aiokafka hands over at offsets `start`..`end - 1`, and
        the partition's position is still `position` (no seek meanwhile).

        Nothing to hand over: control batches (transaction markers), an aborted
        transaction's batches when reading committed records, batches compaction
        emptied, and no batch at all (compaction removed it).
        """
        try:
            data = await fetch_partition_bytes(
                self, tp, start, self._salvage_fetch_bytes, self._salvage_isolation
            )
        except kafka_errors.KafkaError:
            return False
        batches = parse_batches(data)
        aborted = self._aborted(batches)
        covered = start
        for batch in batches:
            if batch.next_offset <= start:
                continue
            if batch.base_offset >= end:
                covered = end
                break
            if (
                not batch.control
                and batch.base_offset not in aborted
                and any(start <= r.offset < end for r in batch.records)
            ):
                return False
            covered = batch.next_offset
        return covered >= end and _delivered_position(self, tp) == position

    def _aborted(self, batches: list[ParsedBatch]) -> set[int]:
        """The batches among `batches` this consumer skips as an aborted transaction's."""
        return aborted_batches(batches) if self._salvage_isolation == READ_COMMITTED else set()

    async def _salvage(
        self, exc: Exception, site: FailureSite, partitions: tuple[TopicPartition, ...]
    ) -> Records:
        error = f"{type(exc).__name__}: {str(exc)[:300]}"
        drained = site.drained
        if site.partition is not None:
            suspects = [site.partition]
        else:
            # not located: try every partition this call could have read
            paused = self.paused()
            suspects = [
                tp
                for tp in sorted(self.assignment())
                if tp not in paused and tp not in drained and (not partitions or tp in partitions)
            ]
        out: Records = {}
        salvaged = False
        for tp in suspects:
            try:
                got = await self._salvage_partition(tp, site, error)
            except kafka_errors.KafkaError as fetch_error:
                log.warning(
                    "corrupt_record_fetch_failed",
                    topic=tp.topic,
                    partition=tp.partition,
                    error=type(fetch_error).__name__,
                    message=str(fetch_error)[:300],
                )
                continue
            if got is not None:
                salvaged = True
                if got:
                    out[tp] = got
        assignment = self.assignment()
        result = {tp: records for tp, records in drained.items() if tp in assignment}
        result.update(out)
        if salvaged:
            self._monitor.unresolved = None
        else:
            self._monitor.failed_to_salvage(
                f"{error} (partitions tried: "
                f"{', '.join(f'{tp.topic}:{tp.partition}' for tp in suspects) or 'none'})"
            )
            await asyncio.sleep(UNRESOLVED_BACKOFF_SECONDS)
        return result

    async def _salvage_partition(
        self, tp: TopicPartition, site: FailureSite, error: str
    ) -> list[SalvagedRecord] | None:
        """The partition's records through its first damaged batch, a stand-in for each
        run of offsets among them with no record; None if no damaged batch is found."""
        if tp not in self.assignment():
            return None
        position = await self.position(tp)
        # the failed call may have passed markers before the damaged batch (the position
        # moved past them, no record handed over): read from where the last call ended
        handed = self._handed_to.get(tp)
        start = handed if handed is not None and handed < position else position
        data = await fetch_partition_bytes(
            self, tp, start, self._salvage_fetch_bytes, self._salvage_isolation
        )
        failed_batch = site.batch if site.partition == tp else None
        batches = parse_batches(data)
        found = salvage_range(batches, start, failed_batch, self._aborted(batches))
        if found is None:
            return None
        records, next_offset = found
        # a rebalance or a seek while fetching: these records are not ours to hand over
        if tp not in self.assignment() or await self.position(tp) != position:
            return []
        self.seek(tp, next_offset)
        out = [self._consumer_record(tp, r) for r in records]
        corrupt = [r for r in records if r.corrupt is not None]
        for record in corrupt:
            self._monitor.corrupt(tp.topic, tp.partition, record)
        log.warning(
            "corrupt_batch_salvaged",
            topic=tp.topic,
            partition=tp.partition,
            from_offset=start,
            next_offset=next_offset,
            records=len(out),
            corrupt=len(corrupt),
            error=error,
        )
        # the markers (and aborted batches) among them are passed with the records
        return _with_holes_filled(tp, out, start, next_offset)

    def _consumer_record(self, tp: TopicPartition, record: ParsedRecord) -> SalvagedRecord:
        key: Any = record.key
        value: Any = record.value
        if record.corrupt is None:
            # a corrupt record keeps its raw bytes: they are dead-lettered as they are
            if self._key_deserializer_fn is not None:
                key = self._key_deserializer_fn(key)
            if self._value_deserializer_fn is not None:
                value = self._value_deserializer_fn(value)
        return SalvagedRecord(
            tp.topic,
            tp.partition,
            record.offset,
            record.timestamp,
            record.timestamp_type,
            key,
            value,
            None,
            -1 if record.key is None else len(record.key),
            -1 if record.value is None else len(record.value),
            record.headers,
            corrupt=record.corrupt,
        )


def _with_holes_filled(
    tp: TopicPartition, records: list[Any], start: int | None = None, end: int | None = None
) -> list[Any]:
    """`records` (of one partition, in offset order) with a stand-in for the offsets
    between two of them, and from `start` and up to `end` when given: offsets passed
    with nothing to hand over (markers, an aborted transaction, compacted records).
    Without it a batch cut between two records (the alignment holding the later one
    back, a bisection, a silence-budget split) stored the offset after the earlier
    one, and the rest started above it: a gap."""
    filled: list[Any] = []
    expected = start if start is not None else records[0].offset if records else 0
    for record in records:
        if record.offset > expected:
            filled.append(_stand_in(tp, expected, record.offset))
        filled.append(record)
        expected = record.offset + 1
    if end is not None and end > expected:
        filled.append(_stand_in(tp, expected, end))
    return filled


def _stand_in(tp: TopicPartition, start: int, end: int) -> SalvagedRecord:
    """The stand-in for offsets `start`..`end - 1`, passed with no record to hand over."""
    return SalvagedRecord(
        tp.topic, tp.partition, start, -1, 0, None, None, None, -1, -1, (), skipped_to=end
    )


def _delivered_position(consumer: AIOKafkaConsumer, tp: TopicPartition) -> int | None:
    """aiokafka's position of `tp` read from its state without waiting (its public
    `position()` waits for a partition being reset); None when it has none."""
    try:
        state = consumer._subscription.subscription.assignment.state_value(tp)
        if state is None or not state.has_valid_position:
            return None
        return int(state.position)
    except (AttributeError, TypeError):
        return None


async def install_salvaging_consumer(
    broker: KafkaBroker, monitor: CorruptRecordMonitor, built: Callable[[SalvagingConsumer], None]
) -> None:
    """Connect `broker` and have its subscriber build a `SalvagingConsumer`, handed to `built`.

    FastStream builds each subscriber's consumer with the broker config's
    `builder`, which `connect()` sets to `partial(AIOKafkaConsumer, **options)`;
    `start()` connects only if not connected yet. So: connect, swap the builder,
    then start. Fails loudly if FastStream stops building consumers that way.
    """
    await broker.connect()
    config = broker.config.broker_config
    config.builder = salvaging_builder(config.builder, monitor, built)


def salvaging_builder(
    builder: Any, monitor: CorruptRecordMonitor, built: Callable[[SalvagingConsumer], None]
) -> Callable[..., SalvagingConsumer]:
    """The same consumer options (connection and security from the factory), salvaging;
    each consumer it builds is handed to `built` (the offset protocol uses it)."""
    if not (isinstance(builder, functools.partial) and builder.func is AIOKafkaConsumer):
        raise RuntimeError(
            "FastStream no longer builds consumers as partial(AIOKafkaConsumer, ...): "
            f"{builder!r}; the corrupt-record salvage cannot be installed"
        )
    salvaging = functools.partial(
        SalvagingConsumer, *builder.args, monitor=monitor, **builder.keywords
    )

    def build(*args: Any, **kwargs: Any) -> SalvagingConsumer:
        consumer = salvaging(*args, **kwargs)
        built(consumer)
        return consumer

    return build
