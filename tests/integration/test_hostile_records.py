"""Hostile records next to valid ones, as real bytes through the real broker.

Each case once made the service drop, block or silently miscount valid
records around it. Here every valid neighbour must be applied exactly once,
every bad record must reach the DLQ with its specific reason, and the stored
offsets must reach the end of every partition.
"""

from __future__ import annotations

import asyncio
import json
import struct
import unicodedata
import uuid
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import asdict
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from structlog.testing import capture_logs

from healthscore.config import Settings
from healthscore.core.scoring.aggregate import feature_name
from healthscore.service import kafka_codecs
from healthscore.service.app import Components, ServiceOptions
from healthscore.service.ingest.decode import Decoded, Decoder, RawRecord
from healthscore.service.ingest.pipeline import (
    as_sent_payload_digest,
    legacy_payload_digest,
    payload_digest,
)
from tests.utils.harness import (
    Topics,
    broker_refusing,
    consume_all,
    fetch,
    fetchval,
    make_producer,
    make_topics,
    never,
    ops_get,
    running_service,
    service_settings,
    wait_for,
)
from tests.utils.raw_batches import (
    batch,
    batch_compressed_as,
    compacted_batch,
    produce_batch,
    transaction_marker,
)
from tests.utils.scenarios import high_watermarks, stored_offsets, wait_caught_up, wait_processed
from tests.utils.states import stored_state_in


def _org(label: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"hostile-{label}"))


async def _claimed_by_an_earlier_release(
    database_url: str,
    usage_topic: str,
    support_topic: str,
    body: dict[str, Any],
    digest: Callable[[Decoded], bytes],
) -> None:
    """Record `body`'s id in processed_events as a release that digested it with `digest`
    (a form other than today's) claimed it."""
    org = body["organization_id"]
    record = RawRecord(usage_topic, 0, 0, org.encode(), orjson.dumps(body), None)
    decoded = Decoder(usage_topic, support_topic, 64 * 1024).decode(record)
    assert isinstance(decoded, Decoded)
    assert digest(decoded) != payload_digest(decoded)
    await fetchval(
        database_url,
        "INSERT INTO processed_events (event_id, organization_id, occurred_at, payload_digest)"
        " VALUES ($1, $2, $3, $4) RETURNING event_id",
        uuid.UUID(body["event_id"]),
        uuid.UUID(org),
        decoded.event.occurred_at,
        digest(decoded),
    )


def _usage(org: str, n: int, at: datetime, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "event_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"hostile-usage-{org}-{n}")),
        "organization_id": org,
        "type": "feature_used",
        "feature": "calendar",
        "occurred_at": (at + timedelta(seconds=n)).isoformat(),
    }
    body.update(changes)
    return body


def _support(org: str, n: int, at: datetime, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "event_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"hostile-support-{org}-{n}")),
        "organization_id": org,
        "interaction_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"hostile-interaction-{org}-{n}")),
        "action": "opened",
        "interaction_type": "check_in",
        "channel": "chat",
        "subject": f"question {n}",
        "occurred_at": (at + timedelta(seconds=n)).isoformat(),
    }
    body.update(changes)
    return body


def _total(service: Components, name: str) -> float:
    """A counter of the service, summed over its labels."""
    return sum(
        sample.value
        for family in service.metrics.registry.collect()
        for sample in family.samples
        if sample.name == name
    )


def _reversed_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _reversed_keys(value[key]) for key in reversed(list(value))}
    return value


async def _through_the_service(
    database: str,
    bootstrap: str,
    settings: Any,
    topic: str,
    records: Sequence[tuple[str, dict[str, Any], int | None]],
) -> list[str]:
    """Send `records` (key, body, record timestamp) to `topic` with the service running
    and wait until it has caught up; the reasons it rejected records for."""
    producer = await make_producer(bootstrap)
    try:
        async with running_service(settings) as service:
            for key, body, stamp in records:
                await producer.send_and_wait(
                    topic, orjson.dumps(body), key=key.encode(), timestamp_ms=stamp
                )
            await wait_caught_up(database, bootstrap, settings.consumer_group, [topic])
            return [reason for o in service.outcomes for reason in o.rejected]
    finally:
        await producer.stop()


def _dead_by_offset(records: list[Any]) -> dict[tuple[int, int], dict[str, bytes | None]]:
    out: dict[tuple[int, int], dict[str, bytes | None]] = {}
    for record in records:
        named = dict(record.headers)
        partition, offset = named["x-source-partition"], named["x-source-offset"]
        assert partition is not None and offset is not None
        out[(int(partition), int(offset))] = named
    return out


async def _caught_up(
    service: Components, settings: Settings, topics: list[str]
) -> tuple[float, list[str]]:
    """Wait until the service applied everything of `topics`; its offset gaps and the
    reasons of what it rejected."""
    assert settings.database_url is not None
    await wait_caught_up(
        settings.database_url.get_secret_value(),
        str(settings.kafka_bootstrap_servers),
        settings.consumer_group,
        topics,
        timeout=30,
    )
    gaps = _total(service, "healthscore_offset_gaps_total")
    return gaps, [reason for o in service.outcomes for reason in o.rejected]


async def test_binary_and_null_headers_do_not_invalidate_or_drop_a_fetch(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    """FastStream's parser used to decode header values and drop the whole fetch."""
    topics = await make_topics(kafka_bootstrap, partitions=2)
    settings = service_settings(migrated_database, kafka_bootstrap, topics)
    at = datetime.now(UTC) - timedelta(hours=1)
    orgs = [_org(f"headers-{i}") for i in range(6)]
    binary = ("traceparent-bin", b"\xff\x00\xfe\x80")
    producer = await make_producer(kafka_bootstrap)
    try:
        async with running_service(settings) as service:
            futures = []
            for n in range(60):
                org = orgs[n % len(orgs)]
                headers: list[tuple[str, bytes | None]] | None = None
                if n % 10 == 3:
                    headers = [binary]
                elif n % 10 == 7:
                    headers = [("x-null", None), ("ok", b"plain")]
                futures.append(
                    await producer.send(
                        topics.usage,
                        orjson.dumps(_usage(org, n, at)),
                        key=org.encode(),
                        headers=headers,
                    )
                )
            # a bad record carrying a binary header: dead-lettered, header kept
            bad = await producer.send(
                topics.usage,
                orjson.dumps(_usage(orgs[0], 999, at, quantity=0)),
                key=orgs[0].encode(),
                headers=[binary],
            )
            for future in futures:
                await future
            bad_meta = await bad
            await wait_caught_up(
                migrated_database, kafka_bootstrap, settings.consumer_group, [topics.usage]
            )
            framework_errors = _total(service, "healthscore_framework_errors_total")
    finally:
        await producer.stop()

    assert await fetchval(migrated_database, "SELECT count(*) FROM processed_events") == 60
    dead = _dead_by_offset(await consume_all(kafka_bootstrap, topics.dlq_usage, 1, settle=0.5))
    assert list(dead) == [(bad_meta.partition, bad_meta.offset)]
    named = dead[(bad_meta.partition, bad_meta.offset)]
    assert named["x-error-reason"] == b"out_of_range"
    assert named[binary[0]] == binary[1]
    assert framework_errors == 0


async def test_records_postgres_cannot_store_are_rejected_at_decode(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    """NUL in text and times outside years 1-9999 used to wedge every retry."""
    topics = await make_topics(kafka_bootstrap, partitions=1)
    settings = service_settings(migrated_database, kafka_bootstrap, topics)
    at = datetime.now(UTC) - timedelta(hours=1)
    org = _org("unstorable")
    cases = {
        "invalid_text": _support(org, 100, at, subject="refund\u0000please"),
        "out_of_range": _support(
            org,
            101,
            at,
            action="follow_up_scheduled",
            follow_up_at="9999-12-31T23:59:59-14:00",
        ),
    }
    producer = await make_producer(kafka_bootstrap)
    offsets: dict[int, str] = {}
    try:
        async with running_service(settings):
            for n in range(20):
                await producer.send(
                    topics.support, orjson.dumps(_support(org, n, at)), key=org.encode()
                )
                if n in (5, 12):
                    reason = "invalid_text" if n == 5 else "out_of_range"
                    meta = await producer.send_and_wait(
                        topics.support, orjson.dumps(cases[reason]), key=org.encode()
                    )
                    offsets[meta.offset] = reason
            await producer.flush()
            await wait_caught_up(
                migrated_database, kafka_bootstrap, settings.consumer_group, [topics.support]
            )
    finally:
        await producer.stop()
    assert await fetchval(migrated_database, "SELECT count(*) FROM support_interactions") == 20
    dead = _dead_by_offset(await consume_all(kafka_bootstrap, topics.dlq_support, 2, settle=0.5))
    assert {offset: named["x-error-reason"] for (_p, offset), named in dead.items()} == {
        offset: reason.encode() for offset, reason in offsets.items()
    }


async def test_a_repeat_with_its_times_or_numbers_written_otherwise_is_a_duplicate(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    """A time is one instant at whatever offset it is written, and the store keeps the
    instant alone; a JSON number is its value, and the service reads no property: a
    producer re-serializing an event in another zone (09:00+01:00 as 08:00Z), or a
    JavaScript relay (`3.0` as `3`, an empty `properties` dropped), repeated it, yet the
    digest kept what was written and the repeat was dead-lettered as an
    `event_id_conflict` (of a usage, a support event, a profile alike)."""
    topics = await make_topics(kafka_bootstrap, partitions=1)
    settings = service_settings(migrated_database, kafka_bootstrap, topics)
    paris = timezone(timedelta(hours=1))
    at = (datetime.now(UTC) - timedelta(hours=3)).replace(microsecond=0)
    org = _org("offsets")

    def local(moment: datetime) -> str:
        return moment.astimezone(paris).isoformat()

    usage = _usage(org, 1, at, occurred_at=local(at), properties={"seats": 3.0, "of": 1e2})
    empty = _usage(org, 4, at, properties={})
    support = _support(
        org, 2, at, action="follow_up_scheduled", occurred_at=local(at),
        follow_up_at=local(at + timedelta(days=2)),
    )  # fmt: skip
    profile = {
        "event_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"hostile-profile-{org}")),
        "organization_id": org,
        "created_at": local(at - timedelta(days=400)),
        "milestones": {"onboarding_completed": local(at - timedelta(days=390))},
        "occurred_at": local(at),
    }

    def in_utc(body: dict[str, Any]) -> dict[str, Any]:
        def utc(text: str) -> str:
            return datetime.fromisoformat(text).astimezone(UTC).isoformat().replace("+00:00", "Z")

        moved: dict[str, Any] = {
            k: utc(v) if k.endswith("_at") and isinstance(v, str) else v for k, v in body.items()
        }
        if "milestones" in body:
            moved["milestones"] = {k: utc(v) for k, v in body["milestones"].items()}
        if body.get("properties") == {}:
            del moved["properties"]
        elif "properties" in body:
            moved["properties"] = {k: int(v) for k, v in body["properties"].items()}
        return moved

    # an id a release that kept the offsets claimed, under its digest: its repeat as
    # sent is a duplicate too
    earlier = _usage(org, 3, at, occurred_at=local(at + timedelta(seconds=3)))
    await _claimed_by_an_earlier_release(
        migrated_database, topics.usage, topics.support, earlier, as_sent_payload_digest
    )
    producer = await make_producer(kafka_bootstrap)
    try:
        async with running_service(settings) as service:
            for topic, body in (
                (topics.usage, usage),
                (topics.usage, empty),
                (topics.support, support),
                (topics.profile, profile),
            ):
                await producer.send_and_wait(topic, orjson.dumps(body), key=org.encode())
                await producer.send_and_wait(topic, orjson.dumps(in_utc(body)), key=org.encode())
            await producer.send_and_wait(topics.usage, orjson.dumps(earlier), key=org.encode())
            await wait_caught_up(
                migrated_database,
                kafka_bootstrap,
                settings.consumer_group,
                [topics.usage, topics.support, topics.profile],
            )
            rejected = [reason for o in service.outcomes for reason in o.rejected]
            duplicates = sum(o.duplicates for o in service.outcomes)
    finally:
        await producer.stop()
    assert rejected == []
    assert duplicates == 5
    state = await stored_state_in(migrated_database, org)
    assert state.event_count == 3  # the usages and the support event, once each


async def test_a_record_only_the_database_refuses_is_isolated(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    """A data error narrows the batch down to its record; the rest is applied."""
    conn_url = migrated_database
    # a rule the decoder does not know: only the database refuses this subject
    await fetchval(
        conn_url,
        "ALTER TABLE support_interactions ADD CONSTRAINT hostile_refused "
        "CHECK (subject IS DISTINCT FROM 'the database refuses this')",
    )
    topics = await make_topics(kafka_bootstrap, partitions=2)
    settings = service_settings(migrated_database, kafka_bootstrap, topics, batch_timeout_ms=300)
    at = datetime.now(UTC) - timedelta(hours=1)
    orgs = [_org(f"refused-{i}") for i in range(4)]
    producer = await make_producer(kafka_bootstrap)
    try:
        sends = []
        for n in range(80):
            org = orgs[n % len(orgs)]
            body = _support(org, n, at)
            if n == 41:
                body["subject"] = "the database refuses this"
            sends.append(
                (n, await producer.send(topics.support, orjson.dumps(body), key=org.encode()))
            )
        metas = {n: await future for n, future in sends}
        # produced before the service starts: one fetch holds the poison and its neighbours
        async with running_service(settings) as service:
            await wait_caught_up(
                migrated_database, kafka_bootstrap, settings.consumer_group, [topics.support]
            )
            failures = service.handler.failures
    finally:
        await producer.stop()
    assert await fetchval(conn_url, "SELECT count(*) FROM support_interactions") == 79
    assert await fetchval(conn_url, "SELECT count(*) FROM processed_events") == 79
    dead = _dead_by_offset(await consume_all(kafka_bootstrap, topics.dlq_support, 1, settle=0.5))
    poison = metas[41]
    assert list(dead) == [(poison.partition, poison.offset)]
    named = dead[(poison.partition, poison.offset)]
    assert named["x-error-reason"] == b"unprocessable"
    detail = named["x-error-detail"]
    assert detail is not None and b"CheckViolationError" in detail
    assert failures == 0  # a data error is no outage: nothing was retried with backoff
    stored = await stored_offsets(migrated_database, settings.consumer_group)
    ends = await high_watermarks(kafka_bootstrap, [topics.support])
    assert {tp: stored.get(tp, 0) for tp in ends} == ends


async def test_a_reused_event_id_with_another_payload_is_a_conflict(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    topics = await make_topics(kafka_bootstrap, partitions=2)
    settings = service_settings(migrated_database, kafka_bootstrap, topics)
    at = datetime.now(UTC) - timedelta(hours=1)
    org, other = _org("conflict-a"), _org("conflict-b")
    original = _usage(org, 1, at, properties={"plan": "pro", "seats": {"used": 3, "paid": 5}})
    # the same event re-serialized (other key order at every depth, other spacing): an
    # exact repeat
    repeat = orjson.dumps(_reversed_keys(original), option=orjson.OPT_INDENT_2)
    changed = {**original, "quantity": 7}
    elsewhere = {**original, "organization_id": other}
    on_support = _support(org, 2, at, event_id=original["event_id"])
    # an id a release before nested keys were sorted claimed, under its digest: its
    # repeat, nested keys in the order that release saw, is a duplicate too
    earlier = _usage(org, 3, at, properties={"seats": {"used": 3, "paid": 5}, "plan": "pro"})
    await _claimed_by_an_earlier_release(
        migrated_database, topics.usage, topics.support, earlier, legacy_payload_digest
    )
    producer = await make_producer(kafka_bootstrap)
    try:
        async with running_service(settings) as service:
            await producer.send_and_wait(topics.usage, orjson.dumps(original), key=org.encode())
            await producer.send_and_wait(topics.usage, repeat, key=org.encode())
            await producer.send_and_wait(topics.usage, orjson.dumps(earlier), key=org.encode())
            conflicts = [
                await producer.send_and_wait(topics.usage, orjson.dumps(changed), key=org.encode()),
                await producer.send_and_wait(
                    topics.usage, orjson.dumps(elsewhere), key=other.encode()
                ),
                await producer.send_and_wait(
                    topics.support, orjson.dumps(on_support), key=org.encode()
                ),
            ]
            await wait_caught_up(
                migrated_database,
                kafka_bootstrap,
                settings.consumer_group,
                [topics.usage, topics.support],
            )
            duplicates = sum(o.duplicates for o in service.outcomes)
    finally:
        await producer.stop()
    assert duplicates == 2
    assert await fetchval(migrated_database, "SELECT count(*) FROM processed_events") == 2
    assert (await stored_state_in(migrated_database, org)).event_count == 1
    dead_usage = _dead_by_offset(
        await consume_all(kafka_bootstrap, topics.dlq_usage, 2, settle=0.5)
    )
    dead_support = _dead_by_offset(
        await consume_all(kafka_bootstrap, topics.dlq_support, 1, settle=0.5)
    )
    assert set(dead_usage) == {(m.partition, m.offset) for m in conflicts[:2]}
    assert set(dead_support) == {(conflicts[2].partition, conflicts[2].offset)}
    reasons = {named["x-error-reason"] for named in [*dead_usage.values(), *dead_support.values()]}
    assert reasons == {b"event_id_conflict"}


async def test_the_gap_guard_seeks_back_over_records_never_handed_over(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    """Skip the consumer ahead behind the service's back: nothing may be lost."""
    topics = await make_topics(kafka_bootstrap, partitions=1)
    settings = service_settings(migrated_database, kafka_bootstrap, topics)
    at = datetime.now(UTC) - timedelta(hours=1)
    org = _org("gap")
    producer = await make_producer(kafka_bootstrap)
    try:
        async with running_service(settings) as service:
            for n in range(3):
                await producer.send_and_wait(
                    topics.usage, orjson.dumps(_usage(org, n, at)), key=org.encode()
                )
            await wait_caught_up(
                migrated_database, kafka_bootstrap, settings.consumer_group, [topics.usage]
            )
            # what a client or framework losing a fetch looks like: the position
            # moves past records the handler never saw
            consumer = service.offsets.consumer
            consumer.seek(TopicPartition(topics.usage, 0), 8)
            for n in range(3, 13):
                await producer.send_and_wait(
                    topics.usage, orjson.dumps(_usage(org, n, at)), key=org.encode()
                )
            await wait_caught_up(
                migrated_database, kafka_bootstrap, settings.consumer_group, [topics.usage]
            )
            gaps = _total(service, "healthscore_offset_gaps_total")
    finally:
        await producer.stop()
    assert gaps >= 1
    assert await fetchval(migrated_database, "SELECT count(*) FROM processed_events") == 13
    stored = await stored_offsets(migrated_database, settings.consumer_group)
    assert stored[(topics.usage, 0)] == 13


async def test_a_stored_offset_beyond_the_log_is_refused_loudly(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    """A recreated topic under a surviving database: consume nothing there, say so."""
    topics = await make_topics(kafka_bootstrap, partitions=2)
    settings = service_settings(migrated_database, kafka_bootstrap, topics)
    at = datetime.now(UTC) - timedelta(hours=1)
    org = _org("recreated")
    producer = await make_producer(kafka_bootstrap)
    try:
        sent = [
            await producer.send_and_wait(
                topics.usage, orjson.dumps(_usage(org, n, at)), key=org.encode()
            )
            for n in range(5)
        ]
    finally:
        await producer.stop()
    partition = sent[0].partition
    # the database remembers more of this partition than the (new) log holds
    await fetchval(
        migrated_database,
        "INSERT INTO consumer_offsets (consumer_group, topic, partition, next_offset) "
        "VALUES ($1, $2, $3, 1000)",
        settings.consumer_group,
        topics.usage,
        partition,
    )

    async with running_service(settings) as service:
        assert service.ops_port
        body = ""
        for _ in range(60):  # bounded: readiness is refreshed in the background
            status, body = await ops_get(service.ops_port, "/readyz")
            if "high watermark" in json.loads(body).get("checks", {}).get("partitions", ""):
                break
            await asyncio.sleep(0.5)
        assert status == 503
        assert "above the high watermark" in json.loads(body)["checks"]["partitions"]
        refused = {
            s.labels["partition"]: s.value
            for metric in service.metrics.partitions_refused.collect()
            for s in metric.samples
        }
        assert refused == {str(partition): 1.0}
        await asyncio.sleep(1.0)  # time to (wrongly) consume, had it not refused
    # nothing consumed, and the stored offset is untouched
    assert await fetchval(migrated_database, "SELECT count(*) FROM processed_events") == 0
    stored = await stored_offsets(migrated_database, settings.consumer_group)
    assert stored[(topics.usage, partition)] == 1000


async def test_a_record_timestamp_past_year_9999_does_not_invalidate_its_event(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    """A producer that sets the record timestamp in microseconds (or nanoseconds): the
    timestamp is only the clock the event is judged against, so the event stands."""
    topics = await make_topics(kafka_bootstrap, partitions=1)
    settings = service_settings(migrated_database, kafka_bootstrap, topics)
    at = datetime.now(UTC) - timedelta(hours=1)
    org = _org("microsecond-stamps")
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    stamps = [now_ms * 1000, now_ms * 1_000_000, now_ms]  # µs, ns, then a sane one
    records = [(org, _usage(org, n, at), stamp) for n, stamp in enumerate(stamps)]
    rejected = await _through_the_service(
        migrated_database, kafka_bootstrap, settings, topics.usage, records
    )
    assert rejected == []
    assert await fetchval(migrated_database, "SELECT count(*) FROM processed_events") == 3


async def test_producer_headers_cannot_pose_as_the_rejection(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    """A record that carries headers named like the DLQ's own (a dead letter re-driven
    with its headers, a producer copying headers through): read by name, the dead
    letter still says why and where it was rejected this time."""
    topics = await make_topics(kafka_bootstrap, partitions=1)
    settings = service_settings(migrated_database, kafka_bootstrap, topics)
    at = datetime.now(UTC) - timedelta(hours=1)
    org = _org("header-posers")
    stale = [
        ("x-error-reason", b"invalid_json"),
        ("x-error-detail", b"not valid JSON: the first time"),
        ("x-source-topic", b"somewhere.else"),
        ("x-source-partition", b"7"),
        ("x-source-offset", b"12345"),
        ("x-rejected-at", b"2020-01-01T00:00:00+00:00"),
        ("x-source-timestamp-ms", b"1"),
        ("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
    ]
    producer = await make_producer(kafka_bootstrap)
    try:
        await producer.send_and_wait(
            topics.usage, orjson.dumps(_usage(org, 0, at)), key=org.encode()
        )
        bad = await producer.send_and_wait(
            topics.usage,
            orjson.dumps(_usage(org, 1, at, quantity=0)),
            key=org.encode(),
            headers=stale,
        )
        async with running_service(settings):
            await wait_caught_up(
                migrated_database, kafka_bootstrap, settings.consumer_group, [topics.usage]
            )
    finally:
        await producer.stop()
    (letter,) = await consume_all(kafka_bootstrap, topics.dlq_usage, 1, settle=0.5)
    named = dict(letter.headers)  # the last of a name wins, as with Java's lastHeader()
    first: dict[str, bytes | None] = {}
    for name, value in letter.headers:
        first.setdefault(name, value)
    for read in (named, first):
        assert read["x-error-reason"] == b"out_of_range"
        assert read["x-source-topic"] == topics.usage.encode()
        assert read["x-source-partition"] == str(bad.partition).encode()
        assert read["x-source-offset"] == str(bad.offset).encode()
        assert read["x-source-timestamp-ms"] == str(bad.timestamp).encode()
    # the producer's own headers are kept: the ones named like ours under another name
    assert named["traceparent"] == stale[-1][1]
    assert [(n, v) for n, v in letter.headers if n.startswith("x-original-")] == [
        (f"x-original-{n}", v) for n, v in stale[:-1]
    ]
    assert await fetchval(migrated_database, "SELECT count(*) FROM processed_events") == 1


async def test_a_corrected_resend_in_the_batch_of_its_misrouted_original_is_applied(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    """An event refused as `interaction_org_mismatch` is not applied, so its id stays
    free: its corrected resend in the same batch is a first occurrence, not a conflict,
    and an exact repeat of it is refused for the same reason, not counted as a duplicate."""
    topics = await make_topics(kafka_bootstrap, partitions=1)
    settings = service_settings(migrated_database, kafka_bootstrap, topics)
    at = datetime.now(UTC) - timedelta(hours=1)
    owner, thief = _org("misrouted-owner"), _org("misrouted-thief")
    opened = _support(owner, 0, at)
    interaction = opened["interaction_id"]

    def moved(n: int, org: str, event: str) -> dict[str, Any]:
        return _support(
            org,
            n,
            at,
            event_id=event,
            interaction_id=interaction,
            action="updated",
            interaction_type=None,
            channel=None,
            subject="moved?",
        )

    fixed_id, repeated_id = str(uuid.uuid4()), str(uuid.uuid4())
    plan = [
        (owner, opened),
        (thief, moved(1, thief, fixed_id)),  # misrouted
        (owner, moved(1, owner, fixed_id)),  # its corrected resend: applied
        (thief, moved(2, thief, repeated_id)),  # misrouted
        (thief, moved(2, thief, repeated_id)),  # the producer's retry of it: misrouted too
    ]
    producer = await make_producer(kafka_bootstrap)
    try:
        # produced before the service starts: one partition, one fetch, one batch
        metas = [
            await producer.send_and_wait(topics.support, orjson.dumps(body), key=org.encode())
            for org, body in plan
        ]
        async with running_service(settings) as service:
            await wait_caught_up(
                migrated_database, kafka_bootstrap, settings.consumer_group, [topics.support]
            )
            duplicates = sum(o.duplicates for o in service.outcomes)
    finally:
        await producer.stop()
    dead = _dead_by_offset(await consume_all(kafka_bootstrap, topics.dlq_support, 3, settle=0.5))
    assert {offset: named["x-error-reason"] for (_p, offset), named in dead.items()} == {
        metas[n].offset: b"interaction_org_mismatch" for n in (1, 3, 4)
    }
    assert duplicates == 0
    assert (
        await fetchval(
            migrated_database,
            "SELECT event_count FROM support_interactions WHERE id = $1",
            uuid.UUID(interaction),
        )
        == 2
    )  # opened + the corrected update
    assert (
        await fetchval(
            migrated_database,
            "SELECT count(*) FROM processed_events WHERE event_id = $1",
            uuid.UUID(fixed_id),
        )
        == 1
    )
    stored = await stored_offsets(migrated_database, settings.consumer_group)
    assert stored[(topics.support, 0)] == len(plan)


async def test_an_event_dated_centuries_back_costs_a_year_of_silence_at_most(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    """A first event dated decades back (1990, the contract's earliest; year 1 was
    admitted until it was refused), then a current one: the batch rescored every 6
    hours of the silence in between (some three million rescorings in one transaction
    from year 1) before its neighbours could commit; now one year."""
    topics = await make_topics(kafka_bootstrap, partitions=2)
    settings = service_settings(migrated_database, kafka_bootstrap, topics)
    at = datetime.now(UTC) - timedelta(hours=1)
    ancient = datetime(1990, 1, 3, tzinfo=UTC)
    org = _org("ancient")
    neighbours = [_org(f"ancient-neighbour-{i}") for i in range(4)]
    bodies = [(org, _usage(org, 0, ancient)), (org, _usage(org, 1, at))]
    bodies += [(n, _usage(n, i, at)) for i, n in enumerate(neighbours)]
    producer = await make_producer(kafka_bootstrap)
    try:
        for key, body in bodies:  # produced first: one fetch holds them all
            await producer.send_and_wait(topics.usage, orjson.dumps(body), key=key.encode())
        # as `serve` runs: batches rescore the silence before an organization's event
        options = ServiceOptions(run_sweep=True, create_topics=False)
        async with running_service(settings, options):
            await wait_caught_up(
                migrated_database, kafka_bootstrap, settings.consumer_group, [topics.usage]
            )
    finally:
        await producer.stop()
    assert await fetchval(migrated_database, "SELECT count(*) FROM processed_events") == 6
    history = await fetchval(
        migrated_database,
        "SELECT count(*) FROM health_score_history WHERE organization_id = $1",
        uuid.UUID(org),
    )
    assert history == 365 + 1  # the silent year's days, then the current event's
    due = await fetchval(
        migrated_database,
        "SELECT rescore_due_at FROM organization_state WHERE organization_id = $1",
        uuid.UUID(org),
    )
    assert due is not None and due > at  # the grid goes on after the current event


async def test_a_dead_letter_too_large_for_its_topic_goes_without_its_value(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    """A record the source topic took but whose dead letter (the same bytes plus the
    headers) exceeds what the producer may send used to fail its batch over and over,
    holding the partition. The dead letter goes without the value now, saying so."""
    topics = await make_topics(kafka_bootstrap, partitions=1)
    limit = 70_000  # what the service's producer may send, here below the source record
    settings = service_settings(
        migrated_database, kafka_bootstrap, topics, kafka_max_request_bytes=limit
    )
    at = datetime.now(UTC) - timedelta(hours=1)
    org = _org("oversized")
    huge = orjson.dumps(_usage(org, 0, at, properties={"blob": "x" * (limit - 600)}))
    assert 64 * 1024 < len(huge) < limit
    producer = await make_producer(kafka_bootstrap)
    try:
        await producer.send_and_wait(
            topics.usage, orjson.dumps(_usage(org, 1, at)), key=org.encode()
        )
        big = await producer.send_and_wait(
            topics.usage, huge, key=org.encode(), headers=[("trace", b"t" * 500)]
        )
        await producer.send_and_wait(
            topics.usage, orjson.dumps(_usage(org, 2, at)), key=org.encode()
        )
        async with running_service(settings):
            await wait_caught_up(
                migrated_database, kafka_bootstrap, settings.consumer_group, [topics.usage]
            )
    finally:
        await producer.stop()
    assert await fetchval(migrated_database, "SELECT count(*) FROM processed_events") == 2
    (letter,) = await consume_all(kafka_bootstrap, topics.dlq_usage, 1, settle=0.5)
    named = dict(letter.headers)
    assert letter.value is None
    assert named["x-error-reason"] == b"too_large"
    assert named["x-source-offset"] == str(big.offset).encode()
    assert (
        named["x-value-omitted"]
        == (
            f"{len(huge)} bytes and 1 header: too large for the dead-letter topic; "
            f"the record stays at its source offset while the topic retains it"
        ).encode()
    )


async def test_a_follow_up_at_the_last_microsecond_of_year_9999_is_stored(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    """`follow_up_at` has no bound but the contract's range: 9999-12-31T23:59:59.999999Z
    is valid. As seconds in a float it rounds up to year 10000, which a datetime cannot
    hold: the event was dead-lettered as `unprocessable`. It is stored, within the float's
    precision (and not as PostgreSQL's `infinity`, which asyncpg makes of datetime.max)."""
    topics = await make_topics(kafka_bootstrap, partitions=1)
    settings = service_settings(migrated_database, kafka_bootstrap, topics)
    at = datetime.now(UTC) - timedelta(hours=1)
    org = _org("last-microsecond-follow-up")
    events = [
        _support(org, 0, at),
        _support(
            org,
            1,
            at,
            action="follow_up_scheduled",
            interaction_id=_support(org, 0, at)["interaction_id"],
            follow_up_at="9999-12-31T23:59:59.999999Z",
        ),
        _support(org, 2, at),  # a neighbour, applied either way
    ]
    rejected = await _through_the_service(
        migrated_database,
        kafka_bootstrap,
        settings,
        topics.support,
        [(org, body, None) for body in events],
    )
    assert rejected == []
    assert await fetchval(migrated_database, "SELECT count(*) FROM processed_events") == 3
    follow_up = await fetchval(
        migrated_database,
        "SELECT follow_up_at::text FROM support_interactions WHERE follow_up_required",
    )
    assert follow_up == "9999-12-31 23:59:59.999998+00"


async def test_a_zero_value_time_is_refused_and_cannot_age_its_organization(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    """A producer's unset time (Go's zero time 0001-01-01T00:00:00Z, an unset Unix time
    1970-01-01) was applied: the organization's first event, which nothing later can
    move, made a week-old customer an established one with milestones missing, and
    nothing said so. Such times are dead-lettered as out_of_range, naming the rule; the
    organization's real events are applied, its first one its first."""
    topics = await make_topics(kafka_bootstrap, partitions=1)
    settings = service_settings(migrated_database, kafka_bootstrap, topics)
    at = datetime.now(UTC) - timedelta(hours=1)
    org = _org("zero-time")
    zero_time = "0001-01-01T00:00:00Z"  # Go's zero time.Time
    records = [
        (org, _usage(org, 0, at, occurred_at=zero_time), None),
        (org, _usage(org, 1, at, occurred_at="1970-01-01T00:00:00Z"), None),
        (org, _usage(org, 2, at, occurred_at="1989-12-31T23:59:59-01:00"), None),
        (org, _usage(org, 3, at), None),
        (org, _support(org, 4, at, follow_up_required=True, follow_up_at=zero_time), None),
    ]
    rejected = await _through_the_service(
        migrated_database, kafka_bootstrap, settings, topics.usage, records[:4]
    )
    rejected += await _through_the_service(
        migrated_database, kafka_bootstrap, settings, topics.support, records[4:]
    )
    assert set(rejected) == {"out_of_range"}  # each batch's reasons: however cut
    letters = await consume_all(kafka_bootstrap, topics.dlq_usage, 3, settle=0.5)
    letters += await consume_all(kafka_bootstrap, topics.dlq_support, 1, settle=0.5)
    assert len(letters) == 4
    details = [dict(r.headers)["x-error-detail"] for r in letters]
    assert all(d is not None and b"is before 1990" in d for d in details), details
    state = await stored_state_in(migrated_database, org)
    assert state.first_event_at == (at + timedelta(seconds=3)).timestamp()
    assert await fetchval(migrated_database, "SELECT count(*) FROM processed_events") == 1


async def test_an_interaction_flipping_its_type_signals_once(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    """A producer flipping an interaction between complaint and another type (and in
    and out of escalation) added the signal at every return: twenty flips made eleven
    decayed complaints of one interaction. It gives each signal once, in any batch and
    after a restart (the interaction's row remembers, not the process)."""
    topics = await make_topics(kafka_bootstrap, partitions=1)
    settings = service_settings(migrated_database, kafka_bootstrap, topics)
    at = datetime.now(UTC) - timedelta(hours=1)
    org = _org("type-flips")
    interaction = _support(org, 0, at)["interaction_id"]

    def flip(n: int, **changes: Any) -> tuple[str, dict[str, Any], None]:
        body = _support(org, n, at, action="updated", interaction_id=interaction, **changes)
        return (org, body, None)

    first = [(org, _support(org, 0, at, interaction_type="complaint"), None)]
    first += [
        flip(n, interaction_type="billing_inquiry" if n % 2 else "complaint") for n in range(1, 21)
    ]
    first += [flip(n, outcome="escalated" if n % 2 else "no_action") for n in range(21, 31)]
    second = [flip(n, interaction_type="complaint" if n % 2 else "check_in") for n in range(31, 41)]
    for records in (first, second):  # two runs of the service: the second reads the row
        rejected = await _through_the_service(
            migrated_database, kafka_bootstrap, settings, topics.support, records
        )
        assert rejected == []
    decayed = (await stored_state_in(migrated_database, org)).decayed
    # the signals of events seconds apart decay by less than a part in a million
    assert round(decayed["complaints"], 4) == 1.0
    assert round(decayed["escalations"], 4) == 1.0
    assert await fetchval(migrated_database, "SELECT count(*) FROM processed_events") == 41


async def test_records_with_neither_key_nor_value_are_dead_lettered_and_passed(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    """A record with a null key and a null value (a tombstone without a key, which
    other clients than aiokafka send), and batches flagged gzip or zstd whose bytes are
    not (each read as one stand-in record with neither). Their dead letters had neither
    key nor value, which aiokafka's producer refuses (AssertionError), so the batch
    failed on every retry and the partition stalled; and a decompression error raised
    below aiokafka's reader (gzip's, cramjam's) was not taken for a read failure at all,
    so the partition stalled before the salvage. They are dead-lettered with an empty
    value and a header saying the record had none; the valid records beside them are
    applied."""
    topics = await make_topics(kafka_bootstrap, partitions=2)
    settings = service_settings(migrated_database, kafka_bootstrap, topics)
    at = datetime.now(UTC) - timedelta(hours=1)
    org, other = _org("null-record"), _org("null-record-neighbour")
    producer = await make_producer(kafka_bootstrap)
    try:

        async def valid(partition: int, key: str, n: int) -> None:
            body = orjson.dumps(_usage(key, n, at))
            await producer.send_and_wait(topics.usage, body, key=key.encode(), partition=partition)

        await valid(0, org, 0)
        null = await produce_batch(kafka_bootstrap, topics.usage, 0, batch([(None, None)]))
        await valid(0, org, 1)
        not_gzip = batch([(org.encode(), orjson.dumps(_usage(org, 5, at)))], codec=1)
        ungzipped = await produce_batch(kafka_bootstrap, topics.usage, 0, not_gzip)
        await valid(0, org, 6)
        await valid(1, other, 2)
        not_zstd = batch([(org.encode(), orjson.dumps(_usage(org, 3, at)))], codec=4)
        unreadable = await produce_batch(kafka_bootstrap, topics.usage, 1, not_zstd)
        await valid(1, other, 4)
        async with running_service(settings) as service:
            await wait_caught_up(
                migrated_database, kafka_bootstrap, settings.consumer_group, [topics.usage]
            )
            failures = service.handler.failures
    finally:
        await producer.stop()
    assert await fetchval(migrated_database, "SELECT count(*) FROM processed_events") == 5
    dead = _dead_by_offset(await consume_all(kafka_bootstrap, topics.dlq_usage, 3, settle=0.5))
    assert sorted(dead) == [(0, null), (0, ungzipped), (1, unreadable)]
    assert dead[(0, null)]["x-error-reason"] == b"empty"
    for where in ((0, ungzipped), (1, unreadable)):
        assert dead[where]["x-error-reason"] == b"corrupt_record"
    for named in dead.values():
        assert named["x-value-null"] == b"the source record had neither key nor value"
    assert failures == 0


async def test_batches_of_every_codec_a_kafka_producer_may_use_are_read(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    """Kafka producers compress with gzip, snappy, lz4 or zstd (lz4 and zstd are common
    settings of Java and librdkafka producers). aiokafka reads all but gzip only with
    cramjam installed, which was not a dependency: every snappy, lz4 or zstd batch was
    read as one corrupt stand-in and dead-lettered, the valid events in it lost (and,
    before dead letters without key or value were sent, its partition stalled)."""
    topics = await make_topics(kafka_bootstrap, partitions=2)
    settings = service_settings(migrated_database, kafka_bootstrap, topics)
    at = datetime.now(UTC) - timedelta(hours=1)
    org, other = _org("codecs"), _org("codecs-neighbour")
    n = 0
    for codec in ("gzip", "snappy", "lz4", "zstd"):
        producer = AIOKafkaProducer(
            bootstrap_servers=kafka_bootstrap,
            enable_idempotence=False,
            compression_type=codec,
            linger_ms=200,  # the three records in one compressed batch
        )
        await producer.start()
        try:
            sent = [
                await producer.send(
                    topics.usage,
                    orjson.dumps(_usage(org, n + i, at)),
                    key=org.encode(),
                    partition=0,
                )
                for i in range(3)
            ]
            await asyncio.gather(*sent)
        finally:
            await producer.stop()
        n += 3
    rejected = await _through_the_service(
        migrated_database,
        kafka_bootstrap,
        settings,
        topics.usage,
        [(other, _usage(other, 100, at), None)],  # a neighbour, uncompressed
    )
    assert rejected == []
    assert await fetchval(migrated_database, "SELECT count(*) FROM processed_events") == 13


async def test_transaction_markers_are_passed_over_without_a_gap_or_a_stall(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    """A transactional producer ends each transaction with a marker (a control batch)
    that takes an offset and that no client hands over. A marker between two fetches
    made the next batch look like a gap (rewound, fetched again, counted and logged as
    one); a marker after a partition's last record left its stored offset one below the
    high watermark for good: the partition never caught up, and a replay, which waits
    for the stored offsets to reach the high watermarks, never ended. The stored offset
    now passes them, with no gap and nothing dead-lettered."""
    topics = await make_topics(kafka_bootstrap, partitions=2)
    settings = service_settings(migrated_database, kafka_bootstrap, topics)
    at = datetime.now(UTC) - timedelta(hours=1)
    org, other = _org("transactions"), _org("transactions-neighbour")
    producer = await make_producer(kafka_bootstrap)

    async def valid(partition: int, key: str, n: int) -> None:
        body = orjson.dumps(_usage(key, n, at))
        await producer.send_and_wait(topics.usage, body, key=key.encode(), partition=partition)

    async def marker(commit: bool = True) -> None:
        await produce_batch(kafka_bootstrap, topics.usage, 0, transaction_marker(commit=commit))

    try:
        async with running_service(settings) as service:
            for n in range(3):
                await valid(0, org, n)
            await marker()
            await wait_processed(migrated_database, 3, exactly=True)
            for n in range(3, 6):
                await valid(0, org, n)
            await marker(commit=False)  # an aborted transaction's marker
            await marker()  # two markers in a row, after the partition's last record
            await valid(1, other, 6)
            gaps, rejected = await _caught_up(service, settings, [topics.usage])
    finally:
        await producer.stop()
    assert await fetchval(migrated_database, "SELECT count(*) FROM processed_events") == 7
    stored = await stored_offsets(migrated_database, settings.consumer_group)
    assert stored == {(topics.usage, 0): 9, (topics.usage, 1): 1}
    assert gaps == 0
    assert rejected == []


async def test_markers_at_the_start_of_a_fetch_are_passed_over_without_a_gap(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    """Markers right after the last record a getmany handed over (the call stopped at
    `max_records`, or a fetch ended there) are passed by the next call before its
    first record: that batch started after the stored offset and was taken for a gap
    (rewound, fetched again, counted in healthscore_offset_gaps_total), once per
    transaction a fetch boundary fell on. The stand-in now covers them too."""
    topics = await make_topics(kafka_bootstrap, partitions=1)
    settings = service_settings(migrated_database, kafka_bootstrap, topics, batch_max_records=3)
    at = datetime.now(UTC) - timedelta(hours=1)
    org = _org("leading-markers")
    producer = await make_producer(kafka_bootstrap)

    async def valid(n: int) -> None:
        body = orjson.dumps(_usage(org, n, at))
        await producer.send_and_wait(topics.usage, body, key=org.encode(), partition=0)

    async def marker() -> None:
        await produce_batch(kafka_bootstrap, topics.usage, 0, transaction_marker())

    try:
        # all in the log before the consumer starts: the first call stops at the third
        # record, the next one passes the markers before handing over the fourth
        for n in range(3):
            await valid(n)
        await marker()
        await marker()
        for n in range(3, 6):
            await valid(n)
        async with running_service(settings) as service:
            gaps, rejected = await _caught_up(service, settings, [topics.usage])
    finally:
        await producer.stop()
    assert await fetchval(migrated_database, "SELECT count(*) FROM processed_events") == 6
    assert await stored_offsets(migrated_database, settings.consumer_group) == {
        (topics.usage, 0): 8
    }
    assert gaps == 0
    assert rejected == []


async def test_markers_between_records_held_back_by_the_alignment_are_no_gap(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    """A marker between two records of one fetch: aiokafka hands both over and passes
    it. When the alignment held the later record back (or a bisection split the batch
    there), the batch stored the offset after the earlier one, and the next batch,
    starting at the held record, was taken for a gap (rewound, fetched again, counted),
    at every alignment cut after a transaction while catching up on a transactional
    producer's topic. A stand-in now covers the offsets between records too."""
    topics = await make_topics(kafka_bootstrap, partitions=1)
    settings = service_settings(
        migrated_database,
        kafka_bootstrap,
        topics,
        batch_max_records=2,
        alignment_live_lag_records=0,  # aligned throughout, as a replay
    )
    at = datetime.now(UTC) - timedelta(hours=1)
    org = _org("held-behind-markers")
    producer = await make_producer(kafka_bootstrap)

    async def send(topic: str, body: dict[str, Any]) -> None:
        await producer.send_and_wait(topic, orjson.dumps(body), key=org.encode(), partition=0)
        await produce_batch(kafka_bootstrap, topic, 0, transaction_marker())

    try:
        # usage runs ahead of support in event time: the alignment holds usage back
        for n in (1, 3, 8):
            await send(topics.usage, _usage(org, n, at))
        for n in range(6):
            await send(topics.support, _support(org, n, at))
        async with running_service(settings) as service:
            await wait_caught_up(
                migrated_database,
                kafka_bootstrap,
                settings.consumer_group,
                [topics.usage, topics.support],
                timeout=30,
            )
            gaps = _total(service, "healthscore_offset_gaps_total")
            held = [o.held_from for o in service.outcomes if o.held_from]
            rejected = [reason for o in service.outcomes for reason in o.rejected]
            # a batch may run on a fetch aiokafka made before the assignment's seek,
            # which then hands those records over again, below the stored offset and
            # skipped: counted in `records`, not as handled (what the metrics count)
            records = sum(o.records - o.skipped_replayed for o in service.outcomes)
    finally:
        await producer.stop()
    assert held  # the case: records held back behind a marker
    assert records == 9  # the batches' record counts (batch_committed, the batch size
    # histogram, the hold-back's pace) count no stand-in
    assert await fetchval(migrated_database, "SELECT count(*) FROM processed_events") == 9
    assert await stored_offsets(migrated_database, settings.consumer_group) == {
        (topics.usage, 0): 6,
        (topics.support, 0): 12,
    }
    assert gaps == 0
    assert rejected == []


async def test_a_marker_before_a_salvaged_batch_is_no_gap(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    """The salvage reads a partition's bytes from its position through the batch aiokafka
    cannot read and hands over their records; a marker among them took an offset it
    handed nothing for, so the batch started above the stored offset: a gap (rewound,
    salvaged again). The salvage's records now account for every offset it passes."""
    topics = await make_topics(kafka_bootstrap, partitions=1)
    settings = service_settings(migrated_database, kafka_bootstrap, topics)
    at = datetime.now(UTC) - timedelta(hours=1)
    org = _org("marker-then-corrupt")
    producer = await make_producer(kafka_bootstrap)

    async def valid(n: int) -> None:
        body = orjson.dumps(_usage(org, n, at))
        await producer.send_and_wait(topics.usage, body, key=org.encode(), partition=0)

    try:
        async with running_service(settings) as service:
            await valid(0)
            await wait_processed(migrated_database, 1, exactly=True)
            await produce_batch(kafka_bootstrap, topics.usage, 0, transaction_marker())
            undecompressable = batch([(org.encode(), orjson.dumps(_usage(org, 1, at)))], codec=1)
            await produce_batch(kafka_bootstrap, topics.usage, 0, undecompressable)
            await valid(2)
            gaps, rejected = await _caught_up(service, settings, [topics.usage])
    finally:
        await producer.stop()
    assert await stored_offsets(migrated_database, settings.consumer_group) == {
        (topics.usage, 0): 4
    }
    assert await fetchval(migrated_database, "SELECT count(*) FROM processed_events") == 2
    assert rejected == ["corrupt_record"]
    assert gaps == 0


async def test_offsets_with_nothing_to_hand_over_are_passed_at_the_end_of_the_log(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    """Offsets a getmany passes with no record and no marker, after the partition's last
    record: here a batch's offsets after its last record (compaction removed those
    records; the call before stopped at `max_records` on that record), and, reading
    committed records, an aborted transaction's batches with their abort marker (the
    embedded broker has no transactions: tests/unit/test_kafka_records.py reads those
    bytes). The stand-in was believed only over control batches, so the stored offset
    stayed below the high watermark for good (the partition never caught up; a replay
    never ended)."""
    topics = await make_topics(kafka_bootstrap, partitions=1)
    settings = service_settings(migrated_database, kafka_bootstrap, topics, batch_max_records=1)
    at = datetime.now(UTC) - timedelta(hours=1)
    org = _org("nothing-to-hand-over")
    kept = (org.encode(), orjson.dumps(_usage(org, 0, at)))
    await produce_batch(kafka_bootstrap, topics.usage, 0, compacted_batch([kept], span=3))
    async with running_service(settings) as service:
        gaps, rejected = await _caught_up(service, settings, [topics.usage])
    assert await stored_offsets(migrated_database, settings.consumer_group) == {
        (topics.usage, 0): 3
    }
    assert await fetchval(migrated_database, "SELECT count(*) FROM processed_events") == 1
    assert gaps == 0
    assert rejected == []


async def test_the_consumer_reads_committed_records_only(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    """A transactional producer's aborted records are never handed over: the consumer
    reads with isolation read_committed (the default would apply them). The embedded
    broker has no transactions (it refuses InitProducerId), so what is shown here is
    that the running consumer asks for committed records and consumes as before; the
    filtering itself is the Kafka broker's and aiokafka's (deploy/ runs Apache Kafka)."""
    topics = await make_topics(kafka_bootstrap, partitions=1)
    settings = service_settings(migrated_database, kafka_bootstrap, topics)
    org = _org("committed")
    producer = await make_producer(kafka_bootstrap)
    try:
        async with running_service(settings) as service:
            assert service.offsets.consumer._isolation_level == "read_committed"
            for n in range(3):
                await producer.send_and_wait(
                    topics.usage,
                    orjson.dumps(_usage(org, n, datetime.now(UTC) - timedelta(hours=1))),
                    key=org.encode(),
                )
            await wait_caught_up(
                migrated_database, kafka_bootstrap, settings.consumer_group, [topics.usage]
            )
    finally:
        await producer.stop()
    assert await fetchval(migrated_database, "SELECT count(*) FROM processed_events") == 3


async def test_a_rejection_echoing_a_huge_input_still_makes_a_sendable_dead_letter(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    """pydantic names a refused dict key in the error's location: a profile whose one
    milestone name is 150 kB put 150 kB into `x-error-detail` (and the log line), so
    even the dead letter without its value was too large, and its batch failed on
    every retry, holding the partition. The detail is bounded now."""
    topics = await make_topics(kafka_bootstrap, partitions=2)
    limit = 100_000  # what the service's producer may send
    settings = service_settings(
        migrated_database,
        kafka_bootstrap,
        topics,
        max_message_bytes=400_000,
        kafka_max_request_bytes=limit,
    )
    at = datetime.now(UTC) - timedelta(hours=1)
    victim, neighbour = _org("huge-detail"), _org("huge-detail-neighbour")

    def profile(org: str, name: str, milestones: dict[str, str]) -> bytes:
        return orjson.dumps(
            {
                "event_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"hostile-profile-{org}-{name}")),
                "organization_id": org,
                "created_at": (at - timedelta(days=400)).isoformat(),
                "milestones": milestones,
                "occurred_at": at.isoformat(),
            }
        )

    earlier = (at - timedelta(days=300)).isoformat()
    hostile = profile(victim, "bomb", {"m" * 150_000: earlier})
    producer = await make_producer(kafka_bootstrap)
    try:
        bad = await producer.send_and_wait(
            topics.profile, hostile, key=victim.encode(), partition=0
        )
        after = profile(victim, "after", {"onboarding_completed": earlier})
        await producer.send_and_wait(topics.profile, after, key=victim.encode(), partition=0)
        beside = profile(neighbour, "beside", {"onboarding_completed": earlier})
        await producer.send_and_wait(topics.profile, beside, key=neighbour.encode(), partition=1)
        async with running_service(settings) as service:
            gaps, reasons = await _caught_up(service, settings, [topics.profile])
            failures = _total(service, "healthscore_batch_failures_total")
    finally:
        await producer.stop()
    assert gaps == 0 and failures == 0
    assert reasons == ["unknown_enum"]
    assert await fetchval(migrated_database, "SELECT count(*) FROM processed_events") == 2
    (letter,) = await consume_all(kafka_bootstrap, topics.dlq_profile, 1, settle=0.5)
    named = dict(letter.headers)
    assert named["x-error-reason"] == b"unknown_enum"
    assert named["x-source-offset"] == str(bad.offset).encode()
    detail = named["x-error-detail"]
    assert detail is not None and len(detail) <= 1024
    assert detail.startswith(b"milestones.mmmm")
    assert b"150000 characters" in detail


async def test_one_organization_on_two_replicas_partitions_is_counted_exactly(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    """A producer that partitions by something else than the key (a custom partitioner,
    an explicit partition) puts one organization on partitions two replicas own, so
    both write its state at once; and reuses one event id on both, each copy another
    payload. Ownership is only a cache: every save is checked against its version, and
    a claim counts an id once. Every event counts once in the state, the id once."""
    topics = await make_topics(kafka_bootstrap, partitions=2)
    settings = service_settings(
        migrated_database, kafka_bootstrap, topics, kafka_session_timeout_ms=3000
    )
    at = datetime.now(UTC) - timedelta(hours=2)
    events = 400
    repeats = 2 * events // 20
    contended = 0
    producer = await make_producer(kafka_bootstrap)
    try:
        async with AsyncExitStack() as stack:
            replicas = [
                await stack.enter_async_context(running_service(settings)) for _ in range(2)
            ]
            await _each_holds_partitions(replicas, 2 * 3)
            # whether the two replicas' batches of the organization overlap is timing: a
            # loaded machine may serialize them, so another organization goes until they do
            for attempt in range(4):
                org = _org(f"two-replicas-{attempt}")
                reused = str(uuid.uuid5(uuid.NAMESPACE_URL, f"hostile-two-replicas-{attempt}"))
                # the outcomes so far, held so that no later one takes an id of theirs
                before = [o for r in replicas for o in r.outcomes]
                known = {id(o) for o in before}
                for start in range(0, events, 20):
                    sent = [
                        await producer.send(
                            topics.usage,
                            orjson.dumps(_usage(org, n, at)),
                            key=org.encode(),
                            partition=n % 2,
                        )
                        for n in range(start, start + 20)
                    ]
                    # the reused id, once per round on each partition, another quantity each
                    sent += [
                        await producer.send(
                            topics.usage,
                            orjson.dumps(
                                _usage(org, 500, at, event_id=reused, quantity=1 + start + p)
                            ),
                            key=org.encode(),
                            partition=p,
                        )
                        for p in (0, 1)
                    ]
                    await asyncio.gather(*sent)
                for replica in replicas:
                    await _caught_up(replica, settings, [topics.usage])
                outcomes = [o for r in replicas for o in r.outcomes if id(o) not in known]
                rejected: dict[str, int] = {}
                for outcome in outcomes:
                    for reason, count in outcome.rejected.items():
                        rejected[reason] = rejected.get(reason, 0) + count
                assert rejected == {"event_id_conflict": repeats - 1}
                assert (
                    await fetchval(
                        migrated_database,
                        "SELECT count(*) FROM processed_events WHERE organization_id = $1",
                        uuid.UUID(org),
                    )
                    == events + 1
                )
                state = await stored_state_in(migrated_database, org)
                assert state.event_count == events + 1
                # quantities: 1 each, and the reused id's copy that won (the first round's)
                assert state.totals["feature_used"] in (events + 1, events + 2)
                contended += sum(o.states_changed_elsewhere for o in outcomes)
                if contended:
                    break
            failures = sum(_total(r, "healthscore_batch_failures_total") for r in replicas)
    finally:
        await producer.stop()
    assert failures == 0
    assert contended > 0  # both replicas did write one organization at once


async def _each_holds_partitions(replicas: Sequence[Components], total: int) -> None:
    """Until every replica holds partitions and together they hold `total`, each once."""
    for _ in range(300):
        held = [replica.offsets.assigned for replica in replicas]
        every = [key for keys in held for key in keys]
        if all(held) and len(every) == len(set(every)) == total:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"the group never settled: {held}")


async def test_a_dead_letter_topic_refusing_writes_holds_only_its_dead_letters(
    migrated_database: str, tmp_path: Path
) -> None:
    """A dead-letter topic that refuses the dead letters (a schema the broker enforces,
    an ACL, a topic gone with auto-creation off) while the broker is up. The batch used
    to publish them before committing, so it failed and was retried for as long as the
    topic refused: every valid record of its partitions waited behind one bad record.
    Now the batch commits them to the outbox with its offsets: the valid records are
    applied at once, the other topic's dead letter is published, and only the refused
    one waits in the outbox, its error recorded and logged, naming the topic and the
    record, for the relay's next attempt."""
    topics = Topics(*(f"{name}.refusing" for name in ("u", "s", "a", "h", "p")))
    others = [*asdict(topics).values(), topics.dlq_support, topics.dlq_profile]
    async with broker_refusing(
        tmp_path / "schemas", topics.dlq_usage, others, partitions=2
    ) as bootstrap:
        settings = service_settings(migrated_database, bootstrap, topics)
        at = datetime.now(UTC) - timedelta(hours=1)
        org, other = _org("refusing-dlq"), _org("refusing-dlq-other")
        producer = await make_producer(bootstrap)
        try:
            bad = await producer.send_and_wait(
                topics.usage,
                orjson.dumps(_usage(org, 0, at, quantity=0)),
                key=org.encode(),
                partition=0,
            )
            bad_support = await producer.send_and_wait(
                topics.support,
                orjson.dumps(_support(org, 0, at, action="teleported")),
                key=org.encode(),
                partition=0,
            )
            for n, (who, partition) in enumerate([(org, 0), (other, 1)], start=1):
                await producer.send_and_wait(
                    topics.usage,
                    orjson.dumps(_usage(who, n, at)),
                    key=who.encode(),
                    partition=partition,
                )
            with capture_logs() as logs:
                async with running_service(settings, ServiceOptions(run_sweep=False)) as service:
                    await _caught_up(service, settings, [topics.usage, topics.support])
                    applied = await fetchval(
                        migrated_database, "SELECT count(*) FROM processed_events"
                    )
                    published = await consume_all(
                        bootstrap, topics.dlq_support, expect=1, settle=0.5
                    )
                    for _ in range(300):
                        if any(log["event"] == "dead_letter_relay_failed" for log in logs):
                            break
                        await asyncio.sleep(0.1)
                    waiting = await fetch(
                        migrated_database,
                        "SELECT source_topic, source_partition, source_offset, reason,"
                        " publish_attempts, last_error FROM dead_letter_outbox",
                    )
                    failures = _total(service, "healthscore_batch_failures_total")
        finally:
            await producer.stop()
    assert applied == 2 and failures == 0  # the valid records went on, no batch retried
    [support_letter] = published
    headers = dict(support_letter.headers)
    assert headers["x-source-offset"] == str(bad_support.offset).encode()
    assert headers["x-error-reason"] == b"unknown_enum"
    [row] = waiting
    assert (row["source_topic"], row["source_partition"], row["source_offset"]) == (
        topics.usage,
        0,
        bad.offset,
    )
    assert row["reason"] == "out_of_range" and row["publish_attempts"] >= 1
    refusal = (
        f"{topics.dlq_usage} refused the dead letter of {topics.usage}:0:{bad.offset} "
        "(out_of_range): UnknownError"
    )
    assert refusal in row["last_error"]
    failed = [log for log in logs if log["event"] == "dead_letter_relay_failed"]
    assert failed and refusal in failed[0]["message"]
    assert failed[0]["error"] == "DeadLetterPublishError"
    assert not [log for log in logs if log["event"] == "batch_failed_will_retry"]


async def test_a_decompression_bomb_is_dead_lettered_without_being_decompressed(
    migrated_database: str, kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch of a few compressed kilobytes may hold gigabytes (a zstd frame of 1 GiB of
    zeros is 32 kB): aiokafka decompressed every batch whole in memory, so one such
    record, past every size check on the compressed bytes, made each replica that
    fetched it run out of memory, again after every restart. Batches are decompressed
    up to a limit now, and one past it is dead-lettered as `corrupt_record`. (Here the
    limit is 1 MiB, KAFKA_MAX_DECOMPRESSED_BATCH_BYTES's least, and the bombs 4 MiB:
    without the limit they were read whole and rejected as `too_large`.)"""
    # the limit is the process's: put back after this test whatever the service set
    monkeypatch.setattr(
        kafka_codecs, "MAX_DECOMPRESSED_BATCH_BYTES", kafka_codecs.MAX_DECOMPRESSED_BATCH_BYTES
    )
    topics = await make_topics(kafka_bootstrap, partitions=2)
    settings = service_settings(
        migrated_database, kafka_bootstrap, topics, kafka_max_decompressed_batch_bytes=1 << 20
    )
    at = datetime.now(UTC) - timedelta(hours=1)
    org, other = _org("bomb"), _org("bomb-neighbour")
    bomb = b" " * (4 << 20)
    bombs = {}
    n = 0
    for codec in ("gzip", "snappy", "lz4", "zstd"):
        producer = AIOKafkaProducer(
            bootstrap_servers=kafka_bootstrap,
            enable_idempotence=False,
            compression_type=codec,
            max_request_size=8 << 20,
        )
        await producer.start()
        try:
            # a valid record before and after it, each batch of its own
            for value in (
                orjson.dumps(_usage(org, n, at)),
                bomb,
                orjson.dumps(_usage(org, n + 1, at)),
            ):
                sent = await producer.send_and_wait(
                    topics.usage, value, key=org.encode(), partition=0
                )
                if value is bomb:
                    bombs[sent.offset] = codec
        finally:
            await producer.stop()
        n += 2
    rejected = await _through_the_service(
        migrated_database,
        kafka_bootstrap,
        settings,
        topics.usage,
        [(other, _usage(other, 100, at), None)],  # the other partition
    )
    assert set(rejected) == {"corrupt_record"}
    assert await fetchval(migrated_database, "SELECT count(*) FROM processed_events") == n + 1
    dead = _dead_by_offset(await consume_all(kafka_bootstrap, topics.dlq_usage, 4, settle=0.5))
    assert {offset for _, offset in dead} == set(bombs)
    for (_, offset), named in dead.items():
        assert named["x-error-reason"] == b"corrupt_record"
        detail = named["x-error-detail"]
        assert detail is not None
        assert f"{bombs[offset]} batch decompresses to more than 1048576 bytes".encode() in detail


async def test_a_snappy_batch_whose_xerial_block_size_is_negative_is_dead_lettered(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    """A snappy batch (the broker stores it without decompressing) in Kafka's xerial
    framing whose first block claims -4 bytes: the capped snappy reader stepped back onto
    the same size without end, holding the event loop and growing until the replica ran
    out of memory, and so every replica after it. It is a batch that does not
    decompress: dead-lettered as corrupt_record, the records around it applied."""
    topics = await make_topics(kafka_bootstrap, partitions=1)
    settings = service_settings(migrated_database, kafka_bootstrap, topics)
    at = datetime.now(UTC) - timedelta(hours=1)
    org = _org("xerial-negative")
    producer = await make_producer(kafka_bootstrap)
    try:
        for n in (0, 1):
            if n:
                frame = b"\x82SNAPPY\x00" + struct.pack("!iii", 1, 1, -4)
                looping = await produce_batch(
                    kafka_bootstrap, topics.usage, 0, batch_compressed_as(frame, codec=2)
                )
            await producer.send_and_wait(
                topics.usage, orjson.dumps(_usage(org, n, at)), key=org.encode(), partition=0
            )
        async with running_service(settings):
            await wait_caught_up(
                migrated_database, kafka_bootstrap, settings.consumer_group, [topics.usage]
            )
    finally:
        await producer.stop()
    assert await fetchval(migrated_database, "SELECT count(*) FROM processed_events") == 2
    dead = _dead_by_offset(await consume_all(kafka_bootstrap, topics.dlq_usage, 1, settle=0.5))
    assert list(dead) == [(0, looping)]
    assert dead[(0, looping)]["x-error-reason"] == b"corrupt_record"
    assert b"xerial block of -4 bytes" in (dead[(0, looping)]["x-error-detail"] or b"")


async def test_other_spellings_of_one_uuid_are_one_organization_and_one_event(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    """The key must be the canonical spelling (Kafka partitions by its bytes), but the
    body's ids may be spelled as any UUID parser reads them: upper case, braces,
    `urn:uuid:`, no hyphens. Each is the same organization (one state, every event
    counted) and the same event id (a repeat is a duplicate, not a second event)."""
    topics = await make_topics(kafka_bootstrap, partitions=1)
    settings = service_settings(migrated_database, kafka_bootstrap, topics)
    at = datetime.now(UTC) - timedelta(hours=1)
    org = _org("spellings")
    spellings = [org, org.upper(), "{" + org + "}", "urn:uuid:" + org, org.replace("-", "")]
    records = [
        (org, _usage(org, n, at, organization_id=spelled), None)
        for n, spelled in enumerate(spellings)
    ]
    # the first event again, its id spelled otherwise each time
    first = records[0][1]
    records += [
        (org, {**first, "event_id": spelled}, None)
        for spelled in (first["event_id"].upper(), "urn:uuid:" + first["event_id"])
    ]
    rejected = await _through_the_service(
        migrated_database, kafka_bootstrap, settings, topics.usage, records
    )
    assert rejected == []
    assert await fetchval(migrated_database, "SELECT count(*) FROM organization_state") == 1
    assert await fetchval(migrated_database, "SELECT count(*) FROM processed_events") == 5
    assert (await stored_state_in(migrated_database, org)).event_count == 5


async def test_a_key_twice_beside_nesting_past_the_recursion_limit_is_a_duplicate_key(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    """The repeated-key check parsed the text again with Python's json, which gives up
    (RecursionError) at about 1,000 levels where orjson goes to 1,024; it then let the
    record through. An unknown field nested 1,000 deep beside a body naming another
    organization first and the key's last was applied to the key's organization while
    a reader keeping the first value sees the other. Such a record is a duplicate_key
    like any; the same nesting without a repeat is a valid record (unknown fields are
    ignored) and is applied."""
    topics = await make_topics(kafka_bootstrap, partitions=1)
    settings = service_settings(migrated_database, kafka_bootstrap, topics)
    at = datetime.now(UTC) - timedelta(hours=1)
    org, other = _org("deep-twice"), _org("deep-twice-other")
    deep = b'"trace":' + b"[" * 1000 + b"]" * 1000 + b","
    twice = _usage(org, 1, at)
    repeated = b'{"organization_id":"' + other.encode() + b'",' + deep + orjson.dumps(twice)[1:]
    once = b"{" + deep + orjson.dumps(_usage(org, 2, at))[1:]
    producer = await make_producer(kafka_bootstrap)
    try:
        async with running_service(settings) as service:
            bad = await producer.send_and_wait(topics.usage, repeated, key=org.encode())
            await producer.send_and_wait(topics.usage, once, key=org.encode())
            await producer.send_and_wait(
                topics.usage, orjson.dumps(_usage(org, 3, at)), key=org.encode()
            )
            _gaps, rejected = await _caught_up(service, settings, [topics.usage])
    finally:
        await producer.stop()
    assert rejected == ["duplicate_key"]
    assert await fetchval(migrated_database, "SELECT count(*) FROM processed_events") == 2
    assert (await stored_state_in(migrated_database, org)).event_count == 2
    dead = _dead_by_offset(await consume_all(kafka_bootstrap, topics.dlq_usage, 1, settle=0.5))
    named = dead[(bad.partition, bad.offset)]
    assert named["x-error-reason"] == b"duplicate_key"
    assert named["x-error-detail"] is not None and b"organization_id" in named["x-error-detail"]


async def test_an_interaction_opened_and_resolved_in_one_second_reads_resolved(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    """A desk stamping to the second gives an interaction handled at once one time for
    its `opened` and its `resolved` (or `closed`). The event id broke the tie, so when
    the opening's id sorted after the resolution's the interaction read `open` for
    good (a resolution time beside it), held the organization's open interactions and
    a support queue; now the furthest step wins at one instant, in either order."""
    topics = await make_topics(kafka_bootstrap, partitions=1)
    settings = service_settings(migrated_database, kafka_bootstrap, topics)
    at = (datetime.now(UTC) - timedelta(hours=1)).replace(microsecond=0)
    org = _org("one-second")
    records = []
    for n, last in enumerate(("resolved", "closed", "resolved")):
        interaction = str(uuid.uuid5(uuid.NAMESPACE_URL, f"one-second-{n}"))
        opened = _support(
            org,
            0,
            at,
            interaction_id=interaction,
            event_id=f"ffffffff-0000-4000-8000-00000000000{n}",
        )
        ended = _support(
            org,
            0,
            at,
            interaction_id=interaction,
            action=last,
            event_id=f"00000000-0000-4000-8000-00000000000{n}",
        )
        # the third interaction's two events arrive the other way round
        records += (
            [(org, ended, None), (org, opened, None)]
            if n == 2
            else [(org, opened, None), (org, ended, None)]
        )
    rejected = await _through_the_service(
        migrated_database, kafka_bootstrap, settings, topics.support, records
    )
    assert rejected == []
    rows = await fetchval(
        migrated_database,
        "SELECT array_agg(status || ' ' || (resolved_at IS NOT NULL OR closed_at IS NOT NULL)"
        " ORDER BY id) FROM support_interactions",
    )  # the resolution's (closing's) time set beside every status
    assert sorted(rows) == ["closed true", "resolved true", "resolved true"]
    assert (await stored_state_in(migrated_database, org)).open_interactions == {}


async def test_text_at_the_edges_of_unicode_is_stored_verbatim(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    """Noncharacters, the last code point, bidi controls, line and paragraph separators
    and a 500-character grapheme cluster are text PostgreSQL stores like any: each
    subject is stored as sent (in NFC, the one spelling search uses: the cluster's first
    accent joins its letter), each feature counted as sent, nothing rejected."""
    topics = await make_topics(kafka_bootstrap, partitions=1)
    settings = service_settings(migrated_database, kafka_bootstrap, topics)
    at = datetime.now(UTC) - timedelta(hours=1)
    org = _org("unicode-edges")
    texts = [
        "\ufffe\uffff\U0010ffff\U0001fffe",
        "\u202eevil\u202c \u2066isolate\u2069 \u200f",
        "line\u2028para\u2029end",
        "e" + "\u0301" * 499,
        "\U0001f469\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466" * 50,
        "\ud7ff\ue000\ufeff",
    ]
    producer = await make_producer(kafka_bootstrap)
    try:
        async with running_service(settings) as service:
            for n, text in enumerate(texts):
                await producer.send_and_wait(
                    topics.support,
                    orjson.dumps(_support(org, n, at, subject=text)),
                    key=org.encode(),
                )
                await producer.send_and_wait(
                    topics.usage,
                    orjson.dumps(_usage(org, n, at, feature=text[:100])),
                    key=org.encode(),
                )
            _gaps, rejected = await _caught_up(service, settings, [topics.usage, topics.support])
            # the read model's jsonb keys them too
            features = await wait_for(
                migrated_database,
                "SELECT array_agg(key) FROM customer_health, jsonb_object_keys(feature_usage) key",
                lambda keys: keys is not None and len(keys) == len(texts),
            )
    finally:
        await producer.stop()
    assert rejected == []
    stored = await fetchval(
        migrated_database,
        "SELECT array_agg(subject ORDER BY first_event_at) FROM support_interactions",
    )
    assert stored == [unicodedata.normalize("NFC", text) for text in texts]
    assert stored[3] == "\u00e9" + "\u0301" * 498  # the only text NFC changes
    state = await stored_state_in(migrated_database, org)
    # a feature as the adoption breadth counts it (review 33 L5: case, surrounding
    # spaces and the Unicode form folded), each of these one of its own
    assert sorted(state.features) == sorted(feature_name(text[:100]) for text in texts)
    assert len(state.features) == len(texts)
    assert sorted(features) == sorted(state.features)


async def test_an_event_id_on_two_topics_in_one_batch_keeps_the_applied_payload(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    """A producer reusing an event id on the usage and the support topic, both records
    in one batch: the batch applies the first in its (event-time) order and
    dead-letters the other as a conflict, but the claim stored the digest of whichever
    its join met first, in (topic, partition) order: the other one's. The applied
    event's exact repeat was then dead-lettered as `event_id_conflict`, and the
    refused record's repeat dropped as a duplicate. The claim keeps the batch's
    order: the digest stored is the applied event's."""
    topics = await make_topics(kafka_bootstrap, partitions=1)
    settings = service_settings(migrated_database, kafka_bootstrap, topics)
    at = datetime.now(UTC) - timedelta(hours=1)
    org = _org("id-on-two-topics")
    reused = str(uuid.uuid5(uuid.NAMESPACE_URL, "hostile-id-on-two-topics"))
    # the usage event first in event time (so first in the batch); the support topic
    # sorts first by name here (product.usage.v1 sorts first in production, where a
    # support event first in time went wrong the same way)
    usage = orjson.dumps(_usage(org, 0, at, event_id=reused))
    support = orjson.dumps(_support(org, 60, at, event_id=reused))
    assert topics.support < topics.usage
    producer = await make_producer(kafka_bootstrap)
    try:
        # both in the log before the service starts: its first fetch holds them both
        await producer.send_and_wait(topics.usage, usage, key=org.encode())
        refused = await producer.send_and_wait(topics.support, support, key=org.encode())
        async with running_service(settings) as service:
            _gaps, rejected = await _caught_up(service, settings, [topics.usage, topics.support])
            assert rejected == ["event_id_conflict"]
            assert [o.applied_by_topic for o in service.outcomes if o.applied] == [
                {topics.usage: 1}
            ]
            # each sent again as it was: the applied one is a duplicate, the other
            # still a conflict
            await producer.send_and_wait(topics.usage, usage, key=org.encode())
            refused_again = await producer.send_and_wait(topics.support, support, key=org.encode())
            _gaps, rejected = await _caught_up(service, settings, [topics.usage, topics.support])
            duplicates = [o.duplicates_by_topic for o in service.outcomes if o.duplicates]
    finally:
        await producer.stop()
    assert rejected == ["event_id_conflict", "event_id_conflict"]
    assert duplicates == [{topics.usage: 1}]
    dead = _dead_by_offset(await consume_all(kafka_bootstrap, topics.dlq_support, 2, settle=0.5))
    assert set(dead) == {(m.partition, m.offset) for m in (refused, refused_again)}
    # read for a while, not until the first empty poll (which may come before the
    # consumer's first fetch): nothing there
    assert await consume_all(kafka_bootstrap, topics.dlq_usage, timeout=3.0, done=never) == []
    record = RawRecord(topics.usage, 0, 0, org.encode(), usage, None)
    applied = Decoder(topics.usage, topics.support, 64 * 1024).decode(record)
    assert isinstance(applied, Decoded)
    stored = await fetchval(
        migrated_database,
        "SELECT payload_digest FROM processed_events WHERE event_id = $1",
        uuid.UUID(reused),
    )
    assert stored == payload_digest(applied)
    state = await stored_state_in(migrated_database, org)
    assert state.event_count == 1 and state.open_interactions == {}


async def test_subjects_that_nfc_lengthens_are_stored_and_hold_nothing(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    """Subjects are stored in NFC, and NFC lengthens some text: U+FB2C (a Hebrew
    presentation form) is three code points in NFC, U+0958 two. A valid subject of 500
    such characters (the contract's bound) was 1,000-1,500 in NFC, past the table's
    500-character check: its record failed alone and was dead-lettered as
    `unprocessable` (a CheckViolationError the producer can do nothing about), and
    eleven in one batch were more than a data problem explains, so the batch stopped
    and was retried for good, holding every valid record of its partitions. Each is
    stored now, in NFC, its neighbours applied."""
    topics = await make_topics(kafka_bootstrap, partitions=1)
    settings = service_settings(migrated_database, kafka_bootstrap, topics)
    at = datetime.now(UTC) - timedelta(hours=1)
    org, neighbour = _org("nfc-longer"), _org("nfc-longer-neighbour")
    texts = ["\ufb2c" * 500, "\u0958" * 500, "\u2adc" * 250 + "x" * 250]
    producer = await make_producer(kafka_bootstrap)
    try:
        # all in the log before the service starts: one batch holds them
        for n in range(11):
            await producer.send_and_wait(
                topics.support,
                orjson.dumps(_support(org, n, at, subject=texts[n % len(texts)])),
                key=org.encode(),
            )
            await producer.send_and_wait(
                topics.usage, orjson.dumps(_usage(neighbour, n, at)), key=neighbour.encode()
            )
        async with running_service(settings) as service:
            _gaps, rejected = await _caught_up(service, settings, [topics.usage, topics.support])
    finally:
        await producer.stop()
    assert rejected == []
    stored = await fetchval(
        migrated_database,
        "SELECT array_agg(subject ORDER BY first_event_at) FROM support_interactions",
    )
    assert stored == [unicodedata.normalize("NFC", texts[n % len(texts)]) for n in range(11)]
    assert max(len(subject) for subject in stored) == 1500
    assert (await stored_state_in(migrated_database, neighbour)).event_count == 11
    assert len((await stored_state_in(migrated_database, org)).open_interactions) == 11


async def test_records_dead_lettered_before_their_batch_failed_are_logged_and_counted(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    """A batch is bisected down to the records the database refuses, each dead-lettered
    as `unprocessable` in a transaction of its own; past ten of them the batch stops
    (`TooManyUnprocessable`) and is fetched again. The parts that committed before it
    stopped were never reported: their dead letters went out without a
    `message_rejected` line or a count in healthscore_events_dead_lettered_total (ten of
    eleven here), and their applied events without a batch line. The database refuses
    the records by a check of its own (added here: a refusal the decoder cannot know)."""
    topics = await make_topics(kafka_bootstrap, partitions=1)
    settings = service_settings(migrated_database, kafka_bootstrap, topics)
    conn = await asyncpg.connect(migrated_database)
    try:
        await conn.execute(
            "ALTER TABLE support_interactions ADD CONSTRAINT refuses_a_subject"
            " CHECK (subject IS DISTINCT FROM 'refused')"
        )
    finally:
        await conn.close()
    at = datetime.now(UTC) - timedelta(hours=1)
    org, neighbour = _org("refused-by-the-database"), _org("refused-neighbour")
    producer = await make_producer(kafka_bootstrap)
    try:
        # all in the log before the service starts: one batch holds them
        for n in range(11):
            await producer.send_and_wait(
                topics.support,
                orjson.dumps(_support(org, n, at, subject="refused")),
                key=org.encode(),
            )
            await producer.send_and_wait(
                topics.usage, orjson.dumps(_usage(neighbour, n, at)), key=neighbour.encode()
            )
        with capture_logs() as logs:
            async with running_service(settings) as service:
                _gaps, _rejected = await _caught_up(
                    service, settings, [topics.usage, topics.support]
                )
                counted = _total(service, "healthscore_events_dead_lettered_total")
                failures = _total(service, "healthscore_batch_failures_total")
                applied = sum(o.applied for o in service.outcomes)
    finally:
        await producer.stop()
    assert failures == 1  # the batch past ten stopped once, and went on from there
    rejected = [line for line in logs if line["event"] == "message_rejected"]
    assert sorted(line["offset"] for line in rejected) == list(range(11))
    assert {line["reason"] for line in rejected} == {"unprocessable"}
    assert counted == 11
    assert applied == 11  # the neighbour's events, each reported once
    assert (await stored_state_in(migrated_database, neighbour)).event_count == 11
    dead = await consume_all(kafka_bootstrap, topics.dlq_support, 11, settle=0.5)
    assert len(dead) == 11
