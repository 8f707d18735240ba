"""Kafka record batches written byte by byte and produced as they are.

aiokafka's producer refuses some records other clients send (a record with neither
key nor value) and compresses only with the codecs whose libraries are installed;
a broker stores a v2 batch as the producer framed it. So a test that needs such a
batch builds it here (aiokafka's pure-Python builder, then attributes patched and
the CRC recomputed) and sends it in a Produce request of its own through the real
broker, one batch per request: the offsets it gets are the broker's.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import for_code
from aiokafka.protocol.produce import ProduceRequest
from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy
from aiokafka.record.util import calc_crc32c

from healthscore.service.kafka_records import BATCH_HEADER, CODEC_MASK, CRC_COVERS_FROM

_ATTRIBUTES_AT = 21  # BaseOffset 8, Length 4, PartitionLeaderEpoch 4, Magic 1, CRC 4
_CRC_AT = 17

Record = tuple[bytes | None, bytes | None]  # key, value


def batch(records: Sequence[Record], *, codec: int = 0, timestamp_ms: int | None = None) -> bytes:
    """A v2 batch of `records`, uncompressed, its attributes claiming `codec`.

    With a codec other than 0 the records are not compressed: the batch is one
    no reader can decompress (what a producer with a broken codec writes), with a
    valid CRC, so only the decompression fails. (The embedded broker refuses codec
    ids 5-7 but stores 1-4 without decompressing.)
    """
    builder = _DefaultRecordBatchBuilderPy(2, 0, 0, -1, -1, -1, 1 << 24)
    stamp = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
    for offset, (key, value) in enumerate(records):
        builder.append(offset, stamp, key, value, [])
    raw = bytearray(builder.build())
    assert len(raw) >= BATCH_HEADER.size
    if codec:
        (attributes,) = struct.unpack_from(">h", raw, _ATTRIBUTES_AT)
        struct.pack_into(">h", raw, _ATTRIBUTES_AT, (attributes & ~CODEC_MASK) | codec)
        return with_crc(bytes(raw))
    return bytes(raw)


def with_crc(raw: bytes) -> bytes:
    """The batch `raw` (its bytes changed after building) with its CRC made valid again,
    so that only what was changed is wrong with it."""
    fixed = bytearray(raw)
    struct.pack_into(">I", fixed, _CRC_AT, calc_crc32c(bytes(fixed[CRC_COVERS_FROM:])))
    return bytes(fixed)


def batch_compressed_as(records_section: bytes, codec: int, *, count: int = 1) -> bytes:
    """A v2 batch flagged `codec` whose compressed records are `records_section` as given
    (a hostile or broken producer's bytes), claiming `count` records, with a valid CRC."""
    raw = bytearray(batch([(b"k", b"v")] * count, codec=codec)[: BATCH_HEADER.size])
    raw += records_section
    struct.pack_into(">i", raw, _LENGTH_AT, len(raw) - _LENGTH_COVERS_FROM)
    return with_crc(bytes(raw))


_LENGTH_AT = 8  # after BaseOffset
_LENGTH_COVERS_FROM = 12  # BaseOffset and Length themselves


async def produce_batch(bootstrap: str, topic: str, partition: int, data: bytes) -> int:
    """Append the batch `data` to the partition as it is; its base offset."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False)
    await producer.start()
    try:
        client = producer.client
        tp = TopicPartition(topic, partition)
        await client.force_metadata_update()
        node = client.cluster.leader_for_partition(tp)
        assert node is not None and node >= 0, f"no leader for {tp}"
        response = await client.send(
            node, ProduceRequest(None, -1, 10_000, [(topic, [(partition, data)])])
        )
    finally:
        await producer.stop()
    for _topic, partitions in response.topics:
        for _partition, error_code, offset, *_rest in partitions:
            error = for_code(error_code)
            if error_code:
                raise error(f"producing a raw batch to {topic}:{partition}")
            return int(offset)
    raise AssertionError(f"no answer for {topic}:{partition}")


CONTROL_FLAG = 0x20
TRANSACTIONAL_FLAG = 0x10


def transaction_marker(*, commit: bool = True, producer_id: int = 4242) -> bytes:
    """A control batch of one commit (or abort) marker, as a transaction coordinator
    writes at the end of a producer's transaction: it takes an offset, and no client
    hands it over as a record. (The embedded broker has no transactions, but stores a
    marker written to it.)"""
    builder = _DefaultRecordBatchBuilderPy(2, 0, 1, producer_id, 0, -1, 1 << 20)
    key = struct.pack(">hh", 0, 1 if commit else 0)  # version, type
    builder.append(0, int(time.time() * 1000), key, struct.pack(">hi", 0, 0), [])
    raw = bytearray(builder.build())
    (attributes,) = struct.unpack_from(">h", raw, _ATTRIBUTES_AT)
    struct.pack_into(">h", raw, _ATTRIBUTES_AT, attributes | CONTROL_FLAG | TRANSACTIONAL_FLAG)
    return with_crc(bytes(raw))


def compacted_batch(records: Sequence[Record], span: int) -> bytes:
    """A batch of `span` offsets of which compaction kept only `records` (the first ones):
    a v2 batch keeps its last offset, so readers pass the offsets after its last record
    with nothing to hand over. (The embedded broker stores it as sent, but serves
    nothing from a batch with no record at all.)"""
    raw = bytearray(batch(records))
    struct.pack_into(">i", raw, 23, span - 1)  # LastOffsetDelta
    return with_crc(bytes(raw))


def transactional_batch(records: Sequence[Record], *, producer_id: int = 4242) -> bytes:
    """A transactional producer's batch of `records` (the embedded broker refuses it: it
    knows no producer ids; for reading bytes as a broker would send them)."""
    builder = _DefaultRecordBatchBuilderPy(2, 0, 1, producer_id, 0, 0, 1 << 24)
    for offset, (key, value) in enumerate(records):
        builder.append(offset, int(time.time() * 1000), key, value, [])
    return bytes(builder.build())
