"""A record aiokafka cannot parse is got past: the records around it are applied.

Two kinds, through the real broker, in one producer batch with valid events before
and after it, while other partitions of both topics carry valid events too; the
service runs aiokafka's default C reader, which gives up on the whole fetch at either.

* A record whose header key is not UTF-8 (written by aiokafka's pure-Python builder):
  headers are metadata, and the contract says one that is not UTF-8 never makes a
  valid event invalid. The event is applied like the others, nothing dead-lettered.
* A record whose lengths do not add up (a raw batch, its CRC valid): every valid event
  applied exactly once, the corrupt record in the DLQ with reason `corrupt_record` and
  its source coordinates, the counter and the monitor updated, and the stored offsets
  at the end of every partition; then the partition keeps flowing.

This is also the guard on the aiokafka internals kafka_salvage relies on
(traceback frame locals, the consumer's client): an upgrade that moves them
makes these tests fail rather than the service stall.
"""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from healthscore.service.kafka_clients import KafkaConnection
from healthscore.service.kafka_records import parse_batches
from healthscore.service.kafka_salvage import (
    CorruptRecordMonitor,
    SalvagingConsumer,
    _failure_site,
    fetch_partition_bytes,
)
from healthscore.service.ops.lag import HighWatermarkProbe
from tests.utils.corrupt_records import (
    Outgoing,
    produce_with_python_builder,
    read_with_python_reader,
)
from tests.utils.harness import (
    Topics,
    consume_all,
    fetchval,
    make_producer,
    make_topics,
    never,
    running_service,
    service_settings,
)
from tests.utils.raw_batches import batch, produce_batch, with_crc
from tests.utils.scenarios import high_watermarks, stored_offsets, wait_caught_up, wait_outcomes
from tests.utils.states import event_counts_in

ORGS = [str(uuid.uuid5(uuid.NAMESPACE_URL, f"corrupt-org-{i}")) for i in range(4)]


def _usage(org: str, at: datetime, n: int) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"corrupt-usage-{org}-{n}")),
        "organization_id": org,
        "user_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"user-{org}")),
        "type": ("login", "feature_used", "client_added")[n % 3],
        "feature": "calendar",
        "occurred_at": at.isoformat(),
    }


def _support(org: str, at: datetime, n: int) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"corrupt-support-{org}-{n}")),
        "organization_id": org,
        "interaction_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"corrupt-interaction-{n}")),
        "action": "opened",
        "interaction_type": "check_in",
        "channel": "chat",
        "occurred_at": at.isoformat(),
    }


async def _batches_of(bootstrap: str, tp: TopicPartition) -> list[tuple[int, int]]:
    """(base offset, next offset) of each batch of `tp`, as the broker holds them."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        consumer.assign([tp])
        data = await fetch_partition_bytes(consumer, tp, 0, 1024 * 1024, 0)
    finally:
        await consumer.stop()
    return [(b.base_offset, b.next_offset) for b in parse_batches(data)]


def _valid_elsewhere(
    topics: Topics, start: datetime, n: int
) -> tuple[list[tuple[str, int, bytes, dict[str, Any]]], int]:
    """Valid events on usage partitions 1 and 2 and support partitions 0 and 1."""
    out: list[tuple[str, int, bytes, dict[str, Any]]] = []
    for partition, org in ((1, ORGS[1]), (2, ORGS[2])):
        for _ in range(6):
            out.append((topics.usage, partition, org.encode(), _usage(org, start, n)))
            n += 1
    for partition, org in ((0, ORGS[3]), (1, ORGS[1])):
        for _ in range(3):
            out.append((topics.support, partition, org.encode(), _support(org, start, n)))
            n += 1
    return out, n


async def _applied_ids(database_url: str) -> set[str]:
    return {
        str(row)
        for row in orjson.loads(
            await fetchval(
                database_url, "SELECT coalesce(json_agg(event_id), '[]') FROM processed_events"
            )
        )
    }


async def test_a_record_with_a_non_utf8_header_key_is_applied(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    """It was dead-lettered as `corrupt_record`, against the contract ("a header that is
    not UTF-8 never makes a valid event invalid"): its event is applied now, its header
    key kept readable (backslash-escaped) for whoever reads the record's headers."""
    topics = await make_topics(kafka_bootstrap, partitions=3)
    settings = service_settings(migrated_database, kafka_bootstrap, topics)
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)
    # usage partition 0: 5 valid, the one with the key, 5 valid: one producer batch
    outgoing: list[Outgoing] = []
    events: list[dict[str, Any]] = []
    for i in range(11):
        event = _usage(ORGS[0], start + timedelta(seconds=i), i)
        events.append(event)
        outgoing.append(
            Outgoing(
                topics.usage,
                0,
                ORGS[0].encode(),
                orjson.dumps(event),
                headers=[("trace-id", f"t{i}".encode())],
                corrupt_header=i == 5,
            )
        )
    elsewhere, _ = _valid_elsewhere(topics, start, 11)
    outgoing += [Outgoing(t, p, k, orjson.dumps(e)) for t, p, k, e in elsewhere]
    events += [e for *_, e in elsewhere]
    offsets = await produce_with_python_builder(kafka_bootstrap, outgoing)
    assert offsets[5] == 5
    # the premise: aiokafka's reader gives up on that batch (tested below), which holds
    # the records after it
    assert await _batches_of(kafka_bootstrap, TopicPartition(topics.usage, 0)) == [(0, 11)]

    group, inputs = settings.consumer_group, [topics.usage, topics.support]
    async with running_service(settings) as service:
        await wait_caught_up(migrated_database, kafka_bootstrap, group, inputs)
        outcomes = await wait_outcomes(service, lambda out: sum(o.records for o in out) >= 29)
        counted = service.metrics.registry.get_sample_value(
            "healthscore_corrupt_records_total", {"topic": topics.usage}
        )
    assert await _applied_ids(migrated_database) == {e["event_id"] for e in events}
    assert sum((await event_counts_in(migrated_database)).values()) == len(events)
    assert not any(outcome.rejected for outcome in outcomes)
    assert counted is None  # no corrupt record
    # read for a while, not until the first empty poll (which may come before the
    # consumer's first fetch): nothing there
    assert await consume_all(kafka_bootstrap, topics.dlq_usage, timeout=3.0, done=never) == []


async def test_a_record_whose_lengths_do_not_add_up_is_dead_lettered_and_passed(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    topics = await make_topics(kafka_bootstrap, partitions=3)
    settings = service_settings(migrated_database, kafka_bootstrap, topics)
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)

    # usage partition 0: 5 valid, the corrupt one, 5 valid: one batch, as a producer
    # framed it, whose sixth record says it holds a header past its own end
    events = [_usage(ORGS[0], start + timedelta(seconds=i), i) for i in range(11)]
    corrupt_event = events[5]
    valid = events[:5] + events[6:]
    raw = bytearray(batch([(ORGS[0].encode(), orjson.dumps(e)) for e in events]))
    header_count = raw.index(orjson.dumps(corrupt_event)) + len(orjson.dumps(corrupt_event))
    assert raw[header_count] == 0  # no headers (a zigzag varint)
    raw[header_count] = 2  # one header, which the record does not hold
    base = await produce_batch(kafka_bootstrap, topics.usage, 0, with_crc(bytes(raw)))
    bad_offset = base + 5
    assert bad_offset == 5
    elsewhere, n = _valid_elsewhere(topics, start, 11)
    producer = await make_producer(kafka_bootstrap)
    try:
        for topic, partition, key, event in elsewhere:
            await producer.send_and_wait(topic, orjson.dumps(event), key=key, partition=partition)
    finally:
        await producer.stop()
    valid += [e for *_, e in elsewhere]
    outgoing_count = 11 + len(elsewhere)

    later: list[dict[str, Any]] = []
    group, inputs = settings.consumer_group, [topics.usage, topics.support]
    async with running_service(settings) as service:
        await wait_caught_up(migrated_database, kafka_bootstrap, group, inputs)
        # the partition keeps flowing after the corrupt batch
        producer = await make_producer(kafka_bootstrap)
        try:
            later = [_usage(ORGS[0], start + timedelta(seconds=n + k), n + k) for k in range(3)]
            for event in later:
                await producer.send_and_wait(
                    topics.usage, orjson.dumps(event), key=ORGS[0].encode(), partition=0
                )
        finally:
            await producer.stop()
        await wait_caught_up(migrated_database, kafka_bootstrap, group, inputs)
        total = outgoing_count + len(later)
        outcomes = await wait_outcomes(service, lambda out: sum(o.records for o in out) >= total)
        counted = service.metrics.registry.get_sample_value(
            "healthscore_corrupt_records_total", {"topic": topics.usage}
        )
        assert service.corrupt_records is not None
        seen = service.corrupt_records.describe()
        assert service.readiness is not None
        ready_status, ready_body = service.readiness.status()

    # every valid event applied exactly once; the corrupt one not at all
    assert await _applied_ids(migrated_database) == {e["event_id"] for e in valid + later}
    event_total = sum((await event_counts_in(migrated_database)).values())
    assert event_total == len(valid) + len(later)
    applied = Counter[str]()
    rejected = Counter[str]()
    for outcome in outcomes:
        applied.update(outcome.applied_by_topic)
        rejected.update(outcome.rejected)
    assert sum(applied.values()) == len(valid) + len(later)
    assert rejected == Counter({"corrupt_record": 1})

    # the corrupt record in the DLQ: what could be read of it, and where it came from
    dead = await consume_all(kafka_bootstrap, topics.dlq_usage, 1, settle=0.5)
    assert len(dead) == 1
    record = dead[0]
    named = dict(record.headers)
    assert named["x-error-reason"] == b"corrupt_record"
    assert named["x-source-topic"] == topics.usage.encode()
    assert named["x-source-partition"] == b"0"
    assert named["x-source-offset"] == str(bad_offset).encode()
    detail = named["x-error-detail"].decode()
    assert f"offset {bad_offset}" in detail and "runs past the end of the record" in detail
    assert record.key == ORGS[0].encode()
    assert record.value == orjson.dumps(corrupt_event)

    # counted once, and shown for readiness
    assert counted == 1.0
    assert seen["corrupt_records"] == 1
    assert seen["last"]["topic"] == topics.usage
    assert (seen["last"]["partition"], seen["last"]["offset"]) == (0, bad_offset)
    assert seen["unresolved"] is None
    # /readyz shows it, and the service stays ready: the record was got past
    assert ready_body["notes"]["corrupt_records"] == 1
    assert ready_body["notes"]["last"]["offset"] == bad_offset
    # got past: the corrupt-record check stays ok (the service's overall readiness
    # also depends on partition assignment, timed by the background checker)
    assert ready_body["checks"]["corrupt_records"] == "ok", ready_status

    # stored offsets at the true end of every partition
    stored = await stored_offsets(migrated_database, settings.consumer_group)
    targets = await high_watermarks(kafka_bootstrap, [topics.usage, topics.support])
    assert {tp: stored.get(tp, 0) for tp in targets} == targets
    assert targets[(topics.usage, 0)] == 11 + len(later)


async def test_the_lag_probe_reads_the_high_watermark_past_a_corrupt_record(
    kafka_bootstrap: str,
) -> None:
    """The probe fetches the last batch for its high watermark; aiokafka then fails on
    the corrupt record in it (here the batch's first, so any fetch position hits it)."""
    topics = await make_topics(kafka_bootstrap, partitions=1)
    await produce_with_python_builder(
        kafka_bootstrap,
        [Outgoing(topics.usage, 0, None, b"{}", corrupt_header=True)]
        + [Outgoing(topics.usage, 0, None, b"{}") for _ in range(2)],
    )
    async with HighWatermarkProbe(KafkaConnection(kafka_bootstrap)) as probe:
        assert await probe.high_watermarks([(topics.usage, 0)]) == {(topics.usage, 0): 3}


async def _read_with_c_reader(bootstrap: str, topic: str, expect: int) -> list[Any]:
    consumer = SalvagingConsumer(
        topic,
        monitor=CorruptRecordMonitor(),
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    got: list[Any] = []
    try:
        for _ in range(150):  # bounded: at most 150 polls of up to 200 ms
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                got.extend((r.partition, r.offset, getattr(r, "corrupt", None)) for r in records)
            if len(got) >= expect:
                break
    finally:
        await consumer.stop()
    return got


async def test_the_consumer_gets_past_it_with_either_aiokafka_reader(kafka_bootstrap: str) -> None:
    """The C reader raises a bare UnicodeDecodeError at a header key that is not UTF-8,
    the pure-Python one CorruptRecordException: both are salvaged, every record read
    exactly once, and none is corrupt (the key is kept, escaped)."""
    topics = await make_topics(kafka_bootstrap, partitions=2)
    outgoing = [
        Outgoing(topics.usage, 0, b"k", f"v{i}".encode(), corrupt_header=i in (0, 4))
        for i in range(8)
    ] + [Outgoing(topics.usage, 1, b"k", f"w{i}".encode()) for i in range(3)]
    await produce_with_python_builder(kafka_bootstrap, outgoing)
    expected = sorted([(0, i) for i in range(8)] + [(1, i) for i in range(3)])
    for got in (
        await _read_with_c_reader(kafka_bootstrap, topics.usage, len(outgoing)),
        await read_with_python_reader(kafka_bootstrap, topics.usage, len(outgoing)),
    ):
        assert sorted((p, o) for p, o, _ in got) == expected
        assert [(p, o) for p, o, c in got if c is not None] == []

    # the aiokafka internals the salvage reads: where a plain consumer fails
    plain = AIOKafkaConsumer(
        bootstrap_servers=kafka_bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    await plain.start()
    try:
        plain.assign([TopicPartition(topics.usage, 0)])
        for _ in range(150):  # bounded: at most 150 polls of up to 200 ms
            try:
                await plain.getmany(timeout_ms=200)
            except UnicodeDecodeError as exc:  # aiokafka's C reader
                site = _failure_site(exc)
                break
        else:
            raise AssertionError("aiokafka read the corrupt record")
    finally:
        await plain.stop()
    assert site is not None
    assert (site.partition, site.batch) == (TopicPartition(topics.usage, 0), (0, 8))
