"""Kafka record batches (message format v2) read tolerantly, record by record.

aiokafka's reader gives up on a whole fetch at the first record it cannot
decode (a header key that is not UTF-8, a length that does not add up), and
every later fetch starting anywhere in that batch parses the batch from its
start again, so no seek gets past it. This reader keeps going: a record that
is framed (its length is readable) but not valid is returned marked `corrupt`
with what failed and at which offset, together with whatever key, value and
headers could be read; the records around it are returned as they are. A header
key that is not UTF-8 does not make a record corrupt: headers are metadata, and the
contract says one that is not UTF-8 never makes a valid event invalid. Its bytes are
kept readable, backslash-escaped (`\xff\xfe`), and the record is handed over.

Only the wire format is used (the layout below is Kafka's DefaultRecordBatch
and DefaultRecord): aiokafka supplies the CRC-32C, `kafka_codecs` the decompressors
(aiokafka's, stopping at a size).

    RecordBatch: BaseOffset int64, Length int32, PartitionLeaderEpoch int32,
      Magic int8, CRC uint32, Attributes int16, LastOffsetDelta int32,
      FirstTimestamp int64, MaxTimestamp int64, ProducerId int64,
      ProducerEpoch int16, BaseSequence int32, RecordCount int32, Records
    Record: Length varint, Attributes int8, TimestampDelta varlong,
      OffsetDelta varint, Key (varint length, -1 = null), Value (likewise),
      HeaderCount varint, Headers [HeaderKey (varint length, UTF-8),
      HeaderValue (varint length, -1 = null)]
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from aiokafka.record.util import calc_crc32c

from healthscore.service.kafka_codecs import gzip_decode, lz4_decode, snappy_decode, zstd_decode

BATCH_HEADER = struct.Struct(">qiibIhiqqqhii")
LOG_OVERHEAD = 12  # BaseOffset and Length: what precedes the Length's count of bytes
CRC_COVERS_FROM = 21  # the CRC covers Attributes to the end of the batch
CODEC_MASK = 0x07
LOG_APPEND_TIME_FLAG = 0x08
TRANSACTIONAL_FLAG = 0x10
CONTROL_FLAG = 0x20
# a control record's key: version (int16), type (int16: 0 abort, 1 commit)
CONTROL_KEY = struct.Struct(">hh")
ABORT_MARKER = 0

_DECOMPRESS: dict[int, tuple[str, Callable[[bytes], bytes]]] = {
    1: ("gzip", gzip_decode),
    2: ("snappy", snappy_decode),
    3: ("lz4", lz4_decode),
    4: ("zstd", zstd_decode),
}

Header = tuple[str, bytes | None]


def _unknown_codec(data: bytes) -> bytes:
    raise ValueError("unknown compression codec")


@dataclass(frozen=True, slots=True)
class ParsedRecord:
    offset: int
    timestamp: int
    timestamp_type: int
    key: bytes | None
    value: bytes | None
    # a key that is not UTF-8 is kept readable: its bytes decoded with backslash escapes
    headers: tuple[Header, ...]
    # why the record is not a valid Kafka record (None: it is); names the offset
    corrupt: str | None = None
    # a header key was not UTF-8 (kept escaped): valid, but aiokafka fails on it
    escaped_header_key: bool = False


@dataclass(frozen=True, slots=True)
class ParsedBatch:
    base_offset: int
    next_offset: int  # one past the batch's last offset, records compacted away or not
    control: bool
    records: tuple[ParsedRecord, ...]
    # what is wrong with the batch beyond single records (leftover bytes, ...)
    problems: tuple[str, ...] = ()
    producer_id: int = -1
    transactional: bool = False

    @property
    def abort_marker(self) -> bool:
        """A control batch ending its producer's transaction with an abort."""
        if not self.control or not self.records or self.records[0].key is None:
            return False
        key = self.records[0].key
        return len(key) >= CONTROL_KEY.size and CONTROL_KEY.unpack_from(key)[1] == ABORT_MARKER

    @property
    def damaged(self) -> bool:
        """aiokafka would fail on this batch."""
        return bool(self.problems) or any(
            r.corrupt is not None or r.escaped_header_key for r in self.records
        )


class _Malformed(Exception):
    """The bytes do not follow the format from here on."""


class _Reader:
    __slots__ = ("buf", "end", "pos")

    def __init__(self, buf: bytes, pos: int, end: int) -> None:
        self.buf = buf
        self.pos = pos
        self.end = end

    def byte(self) -> int:
        if self.pos >= self.end:
            raise _Malformed("the record ends early")
        value = self.buf[self.pos]
        self.pos += 1
        return value

    def varint(self, what: str) -> int:
        """A zigzag varint (Kafka's varint and varlong)."""
        raw = 0
        shift = 0
        while True:
            if self.pos >= self.end:
                raise _Malformed(f"{what} runs past the end of the record")
            b = self.buf[self.pos]
            self.pos += 1
            raw |= (b & 0x7F) << shift
            if not b & 0x80:
                return (raw >> 1) ^ -(raw & 1)
            shift += 7
            if shift > 63:
                raise _Malformed(f"{what} is a varint longer than 10 bytes")

    def take(self, length: int, what: str) -> bytes:
        if self.pos + length > self.end:
            raise _Malformed(
                f"{what} of {length} bytes runs past the end of the record "
                f"({self.end - self.pos} left)"
            )
        value = self.buf[self.pos : self.pos + length]
        self.pos += length
        return value

    def nullable(self, what: str) -> bytes | None:
        length = self.varint(f"{what} length")
        return None if length < 0 else self.take(length, what)


@dataclass(frozen=True, slots=True)
class _BatchInfo:
    base_offset: int
    last_offset: int
    first_timestamp: int
    max_timestamp: int
    log_append_time: bool

    @property
    def name(self) -> str:
        return f"batch {self.base_offset}..{self.last_offset}"

    def timestamp(self, delta: int) -> int:
        return self.max_timestamp if self.log_append_time else self.first_timestamp + delta

    def unreadable(self, offset: int, why: str) -> ParsedRecord:
        """A stand-in for offsets whose records cannot be told apart."""
        span = (
            f"offset {offset}"
            if offset == self.last_offset
            else f"offsets {offset}..{self.last_offset}"
        )
        return ParsedRecord(
            offset=offset,
            timestamp=self.first_timestamp,
            timestamp_type=int(self.log_append_time),
            key=None,
            value=None,
            headers=(),
            corrupt=f"{span} of {self.name} cannot be read: {why}",
        )


class _Unframed(Exception):
    """A record's own length cannot be used: the rest of the batch is unreadable."""


def _read_record(buf: bytes, pos: int, limit: int, info: _BatchInfo) -> tuple[ParsedRecord, int]:
    """One record at `pos`; returns it and where the next one starts."""
    outer = _Reader(buf, pos, limit)
    try:
        length = outer.varint("record length")
    except _Malformed as exc:
        raise _Unframed(str(exc)) from None
    start = outer.pos
    if length <= 0 or start + length > limit:
        raise _Unframed(f"record length {length} does not fit the {limit - start} bytes left")
    end = start + length
    r = _Reader(buf, start, end)
    try:
        r.byte()  # attributes: none defined for records
        ts_delta = r.varint("timestamp delta")
        offset_delta = r.varint("offset delta")
    except _Malformed as exc:
        raise _Unframed(f"record header: {exc}") from None
    offset = info.base_offset + offset_delta
    key: bytes | None = None
    value: bytes | None = None
    headers: list[Header] = []
    problems: list[str] = []
    escaped = False
    try:
        key = r.nullable("key")
        value = r.nullable("value")
        count = r.varint("header count")
        if count < 0:
            raise _Malformed(f"header count is negative ({count})")
        for i in range(count):
            key_length = r.varint(f"header #{i} key length")
            if key_length < 0:
                raise _Malformed(f"header #{i} key length is negative ({key_length})")
            raw_key = r.take(key_length, f"header #{i} key")
            try:
                name = raw_key.decode("utf-8")
            except UnicodeDecodeError:
                # metadata: a key that is not UTF-8 is kept, escaped, and invalidates
                # nothing (aiokafka gives up on its batch: the salvage reads it here)
                name = raw_key.decode("utf-8", "backslashreplace")
                escaped = True
            headers.append((name, r.nullable(f"header #{i} value")))
        if r.pos != end:
            problems.append(f"{end - r.pos} bytes left over after the headers")
    except _Malformed as exc:
        problems.append(f"{exc} (at byte {r.pos - start} of {length})")
    corrupt = None
    if problems:
        corrupt = f"record at offset {offset} ({info.name}): " + "; ".join(problems)
    record = ParsedRecord(
        offset=offset,
        timestamp=info.timestamp(ts_delta),
        timestamp_type=int(info.log_append_time),
        key=key,
        value=value,
        headers=tuple(headers),
        corrupt=corrupt,
        escaped_header_key=escaped,
    )
    return record, end


def _read_batch(data: bytes, pos: int, end: int) -> ParsedBatch:
    (
        base_offset,
        _length,
        _leader_epoch,
        _magic,
        crc,
        attributes,
        last_offset_delta,
        first_timestamp,
        max_timestamp,
        producer_id,
        _producer_epoch,
        _base_sequence,
        count,
    ) = BATCH_HEADER.unpack_from(data, pos)
    info = _BatchInfo(
        base_offset=base_offset,
        last_offset=base_offset + last_offset_delta,
        first_timestamp=first_timestamp,
        max_timestamp=max_timestamp,
        log_append_time=bool(attributes & LOG_APPEND_TIME_FLAG),
    )
    next_offset = info.last_offset + 1
    control = bool(attributes & CONTROL_FLAG)
    transactional = bool(attributes & TRANSACTIONAL_FLAG)
    problems: list[str] = []
    computed = calc_crc32c(data[pos + CRC_COVERS_FROM : end])
    crc_problem = None
    if computed != crc:
        crc_problem = (
            f"{info.name} fails its CRC check (stored {crc:#010x}, computed {computed:#010x})"
        )
        problems.append(crc_problem)

    body = data[pos + BATCH_HEADER.size : end]
    codec = attributes & CODEC_MASK
    if codec:
        name, decompress = _DECOMPRESS.get(codec, (f"codec {codec}", _unknown_codec))
        try:
            body = decompress(body)
        except Exception as exc:
            why = f"{name} decompression failed: {type(exc).__name__}: {str(exc)[:200]}"
            return ParsedBatch(
                base_offset,
                next_offset,
                control,
                (info.unreadable(base_offset, why),),
                (why,),
                producer_id=producer_id,
                transactional=transactional,
            )

    records: list[ParsedRecord] = []
    at = 0
    for _ in range(max(count, 0)):
        try:
            record, at = _read_record(body, at, len(body), info)
        except _Unframed as exc:
            first_unread = records[-1].offset + 1 if records else base_offset
            problems.append(f"{info.name}: records from #{len(records)} on: {exc}")
            if first_unread <= info.last_offset:
                records.append(info.unreadable(first_unread, str(exc)))
            break
        records.append(record)
    else:
        if count < 0:
            problems.append(f"{info.name}: record count is negative ({count})")
        elif at != len(body):
            problems.append(f"{info.name}: {len(body) - at} bytes left over after {count} records")

    if crc_problem is not None:
        # nothing read from bytes that fail their checksum is applied
        records = [
            ParsedRecord(
                r.offset,
                r.timestamp,
                r.timestamp_type,
                r.key,
                r.value,
                r.headers,
                crc_problem if r.corrupt is None else f"{crc_problem}; {r.corrupt}",
            )
            for r in records
        ]
    return ParsedBatch(
        base_offset,
        next_offset,
        control,
        tuple(records),
        tuple(problems),
        producer_id=producer_id,
        transactional=transactional,
    )


def parse_batches(data: bytes) -> list[ParsedBatch]:
    """Every whole v2 batch at the start of `data` (a fetch response's records).

    Stops at a batch cut short (a fetch response may end in one), at bytes too
    short to be a batch, and at an older message format (v0/v1, not read here).
    """
    batches: list[ParsedBatch] = []
    pos = 0
    while pos + LOG_OVERHEAD <= len(data):
        _base, length = struct.unpack_from(">qi", data, pos)
        end = pos + LOG_OVERHEAD + length
        if length < BATCH_HEADER.size - LOG_OVERHEAD or end > len(data):
            break
        if data[pos + 16] != 2:  # magic
            break
        batches.append(_read_batch(data, pos, end))
        pos = end
    return batches


def aborted_batches(batches: Sequence[ParsedBatch]) -> set[int]:
    """The base offsets of the transactional batches among `batches` whose transaction
    they show aborted: their producer's next marker after them is an abort.

    A reader with isolation read_committed skips them (aiokafka with the aborted
    transactions a Fetch response lists; a transaction's batches are below the last
    stable offset only once its marker is written). A transaction whose marker is not
    among `batches` is not known aborted.
    """
    open_batches: dict[int, list[int]] = {}
    aborted: set[int] = set()
    for batch in batches:
        if batch.control:
            ended = open_batches.pop(batch.producer_id, [])
            if batch.abort_marker:
                aborted.update(ended)
        elif batch.transactional:
            open_batches.setdefault(batch.producer_id, []).append(batch.base_offset)
    return aborted
