"""The tolerant record-batch reader, on bytes built by aiokafka's pure-Python builder."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from aiokafka.errors import CorruptRecordException
from aiokafka.record.default_records import (
    DefaultRecordBatch,
    _DefaultRecordBatchBuilderPy,
    _DefaultRecordBatchPy,
)
from aiokafka.record.util import calc_crc32c
from prometheus_client import CollectorRegistry, Counter

from healthscore.service.kafka_records import ParsedRecord, aborted_batches, parse_batches
from healthscore.service.kafka_salvage import CorruptRecordMonitor, salvage_range
from tests.utils.corrupt_records import BAD_KEY_BYTES, NotUtf8Key
from tests.utils.raw_batches import transaction_marker, transactional_batch

GZIP = 1
ESCAPED = BAD_KEY_BYTES.decode("utf-8", "backslashreplace")

Spec = tuple[bytes | None, bytes | None, list[tuple[str, bytes | None]]]


def build(records: list[Spec], base_offset: int = 0, compression: int = 0) -> bytes:
    builder = _DefaultRecordBatchBuilderPy(
        magic=2,
        compression_type=compression,
        is_transactional=0,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1024 * 1024,
    )
    for delta, (key, value, headers) in enumerate(records):
        assert builder.append(delta, 1_000 + delta, key, value, headers) is not None
    batch = builder.build()
    struct.pack_into(">q", batch, 0, base_offset)  # the broker's part; not under the CRC
    return bytes(batch)


def plain(n: int, start: int = 0) -> list[Spec]:
    return [
        (f"k{i}".encode(), f"v{i}".encode(), [("trace", f"t{i}".encode())])
        for i in range(start, start + n)
    ]


def with_bad_key(at: int, n: int) -> list[Spec]:
    specs = plain(n)
    key, value, headers = specs[at]
    specs[at] = (key, value, [(NotUtf8Key("x"), b"hv"), *headers])
    return specs


def aiokafka_reads(data: bytes) -> list[Any]:
    return list(_DefaultRecordBatchPy(data))


def test_a_valid_batch_reads_as_aiokafka_reads_it() -> None:
    specs = [*plain(3), (None, None, []), (b"", b"", [("h", None), ("", b"")])]
    data = build(specs, base_offset=40)
    (batch,) = parse_batches(data)
    assert (batch.base_offset, batch.next_offset, batch.damaged) == (40, 45, False)
    expected = aiokafka_reads(data)
    assert [
        (r.offset, r.timestamp, r.timestamp_type, r.key, r.value, list(r.headers))
        for r in batch.records
    ] == [(r.offset, r.timestamp, r.timestamp_type, r.key, r.value, r.headers) for r in expected]
    assert all(r.corrupt is None for r in batch.records)


@pytest.mark.parametrize("compression", [0, GZIP])
def test_a_header_key_that_is_not_utf8_is_kept_escaped_its_record_valid(compression: int) -> None:
    """Headers are metadata (the contract: one that is not UTF-8 never makes a valid event
    invalid); aiokafka gives up on the whole batch, so the batch reads as damaged (the
    salvage hands it over from here), but no record of it is corrupt."""
    data = build(with_bad_key(at=2, n=5) * 20, base_offset=100, compression=compression)
    assert data[22] & 0x07 == compression  # the attributes' codec bits
    # aiokafka gives up on the whole batch, with either reader
    with pytest.raises(CorruptRecordException, match="invalid record structure"):
        aiokafka_reads(data)
    with pytest.raises((CorruptRecordException, UnicodeDecodeError)):
        list(DefaultRecordBatch(data))

    (batch,) = parse_batches(data)
    assert batch.damaged and batch.problems == ()
    assert len(batch.records) == 100
    assert [r.offset for r in batch.records] == list(range(100, 200))
    assert [r for r in batch.records if r.corrupt is not None] == []
    escaped = [r for r in batch.records if r.escaped_header_key]
    assert [r.offset for r in escaped] == [100 + i for i in range(100) if i % 5 == 2]
    first = escaped[0]
    # the record whole, the key escaped into a str
    assert (first.key, first.value) == (b"k2", b"v2")
    assert first.headers == ((ESCAPED, b"hv"), ("trace", b"t2"))
    good = next(r for r in batch.records if r.offset == 103)
    assert (good.key, good.value, good.headers, good.corrupt) == (
        b"k3",
        b"v3",
        (("trace", b"t3"),),
        None,
    )


def test_a_batch_failing_its_crc_has_every_record_marked() -> None:
    data = bytearray(build(plain(3), base_offset=7))
    data[-1] ^= 0xFF  # the last record's last header value byte
    (batch,) = parse_batches(bytes(data))
    assert batch.damaged
    assert len(batch.records) == 3
    for record in batch.records:
        assert record.corrupt is not None and "fails its CRC check" in record.corrupt
    assert batch.records[0].value == b"v0"


def test_an_unframed_record_makes_the_rest_of_the_batch_one_stand_in() -> None:
    data = bytearray(build(plain(4), base_offset=10))
    first = aiokafka_reads(bytes(data))
    assert len(first) == 4
    # the third record's length varint, made larger than what is left; then fix the CRC
    body = 61
    pos = body
    for _ in range(2):
        length = data[pos] >> 1  # one-byte zigzag varints for these small records
        pos += 1 + length
    data[pos] = 0x7E  # 63
    struct.pack_into(">I", data, 17, calc_crc32c(bytes(data[21:])))
    (batch,) = parse_batches(bytes(data))
    assert [r.offset for r in batch.records] == [10, 11, 12]
    assert [r.corrupt is None for r in batch.records] == [True, True, False]
    stand_in = batch.records[2]
    assert stand_in.corrupt is not None
    assert stand_in.corrupt.startswith("offsets 12..13 of batch 10..13 cannot be read")
    assert (stand_in.key, stand_in.value) == (None, None)
    assert batch.problems


def test_leftover_bytes_after_the_records_damage_the_batch() -> None:
    data = bytearray(build(plain(2)))
    struct.pack_into(">i", data, 57, 1)  # record count 1 of 2
    struct.pack_into(">I", data, 17, calc_crc32c(bytes(data[21:])))
    (batch,) = parse_batches(bytes(data))
    assert [r.corrupt for r in batch.records] == [None]
    assert batch.damaged and "left over" in batch.problems[0]


def test_several_batches_and_a_cut_short_one() -> None:
    one = build(plain(3), base_offset=0)
    two = build(with_bad_key(at=1, n=3), base_offset=3)
    three = build(plain(3), base_offset=6)
    four = build(plain(3), base_offset=9)
    batches = parse_batches(one + two + three + four[:-5])
    assert [(b.base_offset, b.next_offset, b.damaged) for b in batches] == [
        (0, 3, False),
        (3, 6, True),
        (6, 9, False),
    ]


def _offsets(found: tuple[list[ParsedRecord], int] | None) -> tuple[list[int], int] | None:
    return None if found is None else ([r.offset for r in found[0]], found[1])


def test_the_salvaged_range_runs_from_the_position_through_the_first_damaged_batch() -> None:
    data = (
        build(plain(3), base_offset=0)
        + build(with_bad_key(at=1, n=3), base_offset=3)
        + build(with_bad_key(at=0, n=3), base_offset=6)
    )
    batches = parse_batches(data)
    assert _offsets(salvage_range(batches, 1, None)) == ([1, 2, 3, 4, 5], 6)
    # a position inside the damaged batch: the records below it are not handed over again
    assert _offsets(salvage_range(batches, 4, None)) == ([4, 5], 6)
    assert _offsets(salvage_range(batches, 6, None)) == ([6, 7, 8], 9)
    # nothing damaged where aiokafka failed: the batch it was reading ends the range
    clean = parse_batches(build(plain(3), base_offset=0) + build(plain(3), base_offset=3))
    assert _offsets(salvage_range(clean, 0, (3, 6))) == ([0, 1, 2, 3, 4, 5], 6)
    assert salvage_range(clean, 0, None) is None


async def test_the_monitor_counts_each_source_offset_once_and_reports_it() -> None:
    registry = CollectorRegistry()
    counter = Counter("corrupt_total", "test", ["topic"], registry=registry)
    now = [1_000.0]
    monitor = CorruptRecordMonitor(counter, clock=lambda: now[0])
    assert await monitor.check() is None
    record = ParsedRecord(5, 0, 0, b"k", b"v", (), corrupt="record at offset 5: bad")
    monitor.corrupt("usage", 0, record)
    monitor.corrupt("usage", 0, record)  # read again after a retried batch
    assert registry.get_sample_value("corrupt_total", {"topic": "usage"}) == 1.0
    described = monitor.describe()
    assert described["corrupt_records"] == 1
    assert described["last"]["offset"] == 5
    problem = await monitor.check(recent_seconds=60)
    assert problem is not None and "usage:0:5" in problem
    now[0] += 61
    assert await monitor.check(recent_seconds=60) is None
    monitor.failed_to_salvage("could not find it")
    assert await monitor.check() == "cannot get past an unreadable record: could not find it"


def _at(data: bytes, base_offset: int) -> bytes:
    """`data` (one batch) as a broker sends it from `base_offset`."""
    return struct.pack(">q", base_offset) + data[8:]


def test_an_aborted_transactions_batches_are_known_and_hand_over_nothing() -> None:
    """A reader of committed records skips an aborted transaction's batches (aiokafka,
    with the aborted transactions the Fetch response lists). The salvage, reading the
    same bytes itself, handed their records over as valid ones; and offsets passed over
    them with no record were no skip it believed (only control batches were)."""
    data = b"".join(
        [
            _at(transactional_batch([(b"k", b"committed")], producer_id=7), 0),
            _at(transaction_marker(commit=True, producer_id=7), 1),
            _at(transactional_batch([(b"k", b"aborted"), (b"k", b"aborted")], producer_id=7), 2),
            _at(transactional_batch([(b"k", b"other producer")], producer_id=8), 4),
            _at(transaction_marker(commit=False, producer_id=7), 5),
            _at(transaction_marker(commit=True, producer_id=8), 6),
            _at(build([(b"k", b"plain", [])]), 7),
        ]
    )
    batches = parse_batches(data)
    assert [b.abort_marker for b in batches] == [False, False, False, False, True, False, False]
    assert aborted_batches(batches) == {2}
    found = salvage_range(batches, 0, (7, 8), aborted_batches(batches))
    assert found is not None
    assert [r.value for r in found[0]] == [b"committed", b"other producer", b"plain"]
    assert found[1] == 8
