"""Every bad message goes to `<topic>.dlq` unchanged, with headers saying why and where.

The whole poison corpus (both topics) is interleaved with valid events on
both topics and consumed by the real service. Each dead letter is matched to
the record it came from by its x-source-* headers; the valid events around
the bad ones are all applied, and the stored offsets reach the end.
"""

from __future__ import annotations

import random
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from healthscore_lab.poison import PoisonCase, poison_corpus
from tests.utils.harness import (
    consume_all,
    fetchval,
    make_topics,
    running_service,
    service_settings,
)
from tests.utils.scenarios import (
    high_watermarks,
    stored_offsets,
    wait_caught_up,
    wait_outcomes,
)
from tests.utils.states import event_counts_in

ORGS = [str(uuid.uuid5(uuid.NAMESPACE_URL, f"poison-org-{i}")) for i in range(4)]
TRACE_HEADER = ("trace-id", b"poison-test")


@dataclass
class Sent:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    case: PoisonCase | None  # None: a valid event


def _valid_usage(org: str, at: datetime, n: int) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"poison-valid-usage-{org}-{n}")),
        "organization_id": org,
        "user_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"user-{org}")),
        "type": ("login", "feature_used", "client_added")[n % 3],
        "feature": "calendar",
        "occurred_at": at.isoformat(),
    }


def _valid_support(org: str, at: datetime, n: int) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"poison-valid-support-{org}-{n}")),
        "organization_id": org,
        "interaction_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"poison-interaction-{org}-{n}")),
        "action": "opened",
        "interaction_type": "check_in",
        "channel": "chat",
        "occurred_at": at.isoformat(),
    }


async def _read_topics(bootstrap: str, topics: list[str]) -> dict[tuple[str, int, int], Any]:
    """Every record of `topics`, by (topic, partition, offset)."""
    ends = await high_watermarks(bootstrap, topics)
    consumer = AIOKafkaConsumer(
        *topics, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    records: dict[tuple[str, int, int], Any] = {}
    try:
        loop_deadline = 200  # bounded: at most 200 fetches of up to 200 ms
        while len(records) < sum(ends.values()) and loop_deadline > 0:
            loop_deadline -= 1
            batch = await consumer.getmany(timeout_ms=200)
            for recs in batch.values():
                for r in recs:
                    records[(r.topic, r.partition, r.offset)] = r
    finally:
        await consumer.stop()
    return records


async def test_poison_messages_go_to_the_dlq_unchanged(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    topics = await make_topics(kafka_bootstrap, partitions=3)
    settings = service_settings(migrated_database, kafka_bootstrap, topics)
    now = datetime.now(UTC).replace(microsecond=0)
    now_ms = int(now.timestamp() * 1000)
    cases = [case for org in ORGS[:2] for case in poison_corpus(org, now)]
    assert {c.kind for c in cases} == {"usage", "support"} and len(cases) > 80

    # valid events of both topics around every bad one (1..3 between consecutive bad ones)
    rng = random.Random(11)
    plan: list[tuple[str, bytes | None, bytes, PoisonCase | None, list[tuple[str, bytes]]]] = []
    n = 0
    for case in cases:
        for _ in range(rng.randint(1, 3)):
            org = rng.choice(ORGS)
            at = now - timedelta(minutes=30) + timedelta(seconds=n)
            if rng.random() < 0.5:
                body, topic = _valid_usage(org, at, n), topics.usage
            else:
                body, topic = _valid_support(org, at, n), topics.support
            plan.append((topic, org.encode(), orjson.dumps(body), None, []))
            n += 1
        topic = topics.usage if case.kind == "usage" else topics.support
        headers = [TRACE_HEADER] if case.name == "json_array" else []
        plan.append((topic, case.key, case.value, case, headers))
    valid_count = n

    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, acks="all", enable_idempotence=False
    )
    await producer.start()
    sent: list[Sent] = []
    try:
        async with running_service(settings) as service:
            futures = [
                await producer.send(
                    topic, value=value, key=key, timestamp_ms=now_ms, headers=headers or None
                )
                for topic, key, value, _case, headers in plan
            ]
            for (topic, key, value, sent_case, _h), future in zip(plan, futures, strict=True):
                meta = await future
                sent.append(Sent(topic, meta.partition, meta.offset, key, value, sent_case))
            targets = await wait_caught_up(
                migrated_database,
                kafka_bootstrap,
                settings.consumer_group,
                [topics.usage, topics.support],
            )
            outcomes = await wait_outcomes(
                service, lambda out: sum(o.records for o in out) >= len(plan)
            )

            # an event that moves a stored interaction to another organization
            owned = next(orjson.loads(v) for t, _k, v, c, _h in plan if t == topics.support)
            thief = next(o for o in ORGS if o != owned["organization_id"])
            body = {**owned, "event_id": str(uuid.uuid4()), "organization_id": thief}
            body.update(action="updated", interaction_type=None, channel=None)
            moved = await producer.send_and_wait(
                topics.support, orjson.dumps(body), key=thief.encode(), timestamp_ms=now_ms
            )
            await wait_caught_up(
                migrated_database,
                kafka_bootstrap,
                settings.consumer_group,
                [topics.usage, topics.support],
            )
            # the producer fixes it and sends it again, same event id (its idempotency key)
            fixed = {**body, "organization_id": owned["organization_id"]}
            await producer.send_and_wait(
                topics.support, orjson.dumps(fixed), key=owned["organization_id"].encode()
            )
            await wait_caught_up(
                migrated_database,
                kafka_bootstrap,
                settings.consumer_group,
                [topics.usage, topics.support],
            )
    finally:
        await producer.stop()

    bad = [s for s in sent if s.case is not None]
    bad_usage = sum(1 for s in bad if s.topic == topics.usage)
    dead_usage = await consume_all(kafka_bootstrap, topics.dlq_usage, bad_usage, settle=0.5)
    dead_support = await consume_all(
        kafka_bootstrap, topics.dlq_support, len(bad) - bad_usage + 1, settle=0.5
    )
    misrouted = [
        r
        for r in dead_support
        if dict(r.headers)["x-source-offset"] == str(moved.offset).encode()
        and dict(r.headers)["x-source-partition"] == str(moved.partition).encode()
    ]
    assert len(misrouted) == 1
    assert dict(misrouted[0].headers)["x-error-reason"] == b"interaction_org_mismatch"
    detail = dict(misrouted[0].headers)["x-error-detail"].decode()
    assert owned["interaction_id"] in detail
    # the producing team reads the dead letter: the organization holding the interaction
    # is not theirs to know (the on-call engineer's log line names it)
    assert owned["organization_id"] not in detail and "another organization" in detail
    dead = dead_usage + [r for r in dead_support if r is not misrouted[0]]
    assert len(dead) == len(bad)  # each exactly once (settle: nothing more arrived)

    originals = await _read_topics(kafka_bootstrap, [topics.usage, topics.support])
    by_source: dict[tuple[str, int, int], tuple[Any, dict[str, bytes]]] = {}
    for record in dead:
        named = dict(record.headers)
        source = (
            named["x-source-topic"].decode(),
            int(named["x-source-partition"]),
            int(named["x-source-offset"]),
        )
        assert source not in by_source, f"dead-lettered twice: {source}"
        by_source[source] = (record, named)
    for s in bad:
        assert s.case is not None
        record, named = by_source[(s.topic, s.partition, s.offset)]
        assert record.topic == s.topic + ".dlq"
        # the original bytes and key, unchanged
        assert record.value == s.value, s.case.name
        assert record.key == s.key, s.case.name
        assert originals[(s.topic, s.partition, s.offset)].value == s.value
        assert named["x-error-reason"].decode() == s.case.expected_reason, s.case.name
        assert named["x-error-detail"].strip(), s.case.name
        assert int(named["x-source-timestamp-ms"]) == now_ms
        if s.case.name == "json_array":
            assert record.headers[-1] == TRACE_HEADER  # the producer's header, kept after ours

    # every valid event applied; counted per topic; rejections counted per reason. The
    # misrouted event is not applied, so its id is not remembered as processed either (a
    # corrected resend with the same event id must not be dropped as a duplicate)
    assert (
        await fetchval(migrated_database, "SELECT count(*) FROM processed_events")
        == valid_count + 1
    )
    event_total = sum((await event_counts_in(migrated_database)).values())
    assert event_total == valid_count + 1
    interaction_events = await fetchval(
        migrated_database,
        "SELECT event_count FROM support_interactions WHERE id = $1",
        uuid.UUID(owned["interaction_id"]),
    )
    assert interaction_events == 2  # opened + the corrected update
    applied = Counter[str]()
    rejected = Counter[str]()
    for outcome in outcomes:
        applied.update(outcome.applied_by_topic)
        rejected.update(outcome.rejected)
    assert sum(applied.values()) == valid_count
    assert rejected == Counter(s.case.expected_reason for s in bad if s.case is not None)

    # the consumer moved on: stored offsets at the true end of every partition
    stored = await stored_offsets(migrated_database, settings.consumer_group)
    targets = await high_watermarks(kafka_bootstrap, [topics.usage, topics.support])
    assert {tp: stored.get(tp, 0) for tp in targets} == targets
    assert sum(targets.values()) == len(plan) + 2
    assert stored[(topics.support, moved.partition)] == moved.offset + 1
