"""Every event delivered twice counts once; a full redelivery changes nothing.

Part one: the same stream is produced once into one database and with every
message twice (the second copy later in the stream, often in another batch)
into another; the derived state must be the same. Part two: the service's
stored offsets are deleted, so a restart with the same consumer group reads
both topics again from the beginning; the `processed_events` dedupe must
skip every record, write nothing, and the batch outcomes must count the skips.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterable
from typing import Any

import asyncpg

from healthscore.service.app import Components
from healthscore.service.ingest.pipeline import BatchOutcome
from healthscore_lab.simulator import SimulatedMessage
from tests.conftest import DatabaseFactory
from tests.utils.harness import Topics, make_topics, running_service, service_settings
from tests.utils.scenarios import (
    Snapshot,
    assert_identical_for,
    assert_same_event_set_state,
    expected_event_counts,
    organizations_by_topic,
    produce_stream,
    simulated_stream,
    snapshot,
    stored_offsets,
    wait_caught_up,
    wait_outcomes,
)


def doubled(messages: list[SimulatedMessage], seed: int = 5) -> list[SimulatedMessage]:
    """Every message twice: the copy 1..400 messages after its original."""
    rng = random.Random(seed)
    slots: list[tuple[float, int, SimulatedMessage]] = []
    for position, message in enumerate(messages):
        slots.append((position, 0, message))
        copy = dataclasses.replace(message, is_duplicate=True)
        slots.append((position + rng.randint(1, 400) + 0.5, 1, copy))
    slots.sort(key=lambda slot: (slot[0], slot[1]))
    return [message for _, _, message in slots]


async def _consume(
    database_url: str, bootstrap: str, topics: Topics, messages: list[SimulatedMessage]
) -> tuple[Components, str]:
    settings = service_settings(database_url, bootstrap, topics, batch_max_records=400)
    async with running_service(settings) as service:
        await produce_stream(bootstrap, topics, messages)
        await wait_caught_up(
            database_url, bootstrap, settings.consumer_group, [topics.usage, topics.support]
        )
        await wait_outcomes(service, lambda out: _handled(out) >= len(messages))
    return service, settings.consumer_group


def _handled(outcomes: Iterable[BatchOutcome]) -> int:
    """Records applied or skipped as duplicates (each valid record exactly once)."""
    return sum(o.applied + o.duplicates for o in outcomes)


async def _write_markers(database_url: str) -> dict[str, Any]:
    """Columns that any write would move (versions, wall-clock stamps, row counts)."""
    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow(
            """
            SELECT (SELECT sum(health_version) FROM organization_state) AS versions,
                   (SELECT max(updated_at) FROM organization_state) AS state_updated,
                   (SELECT max(updated_at) FROM customer_health) AS health_updated,
                   (SELECT max(updated_at) FROM support_interactions) AS interactions_updated,
                   (SELECT count(*) FROM health_score_history) AS history,
                   (SELECT max(recorded_at) FROM health_score_history) AS history_recorded,
                   (SELECT count(*) FROM alert_outbox) AS alerts,
                   (SELECT count(*) FROM success_milestones) AS milestones,
                   (SELECT count(*) FROM processed_events) AS processed,
                   (SELECT max(processed_at) FROM processed_events) AS processed_at
            """
        )
    finally:
        await conn.close()
    assert row is not None
    return dict(row)


async def test_duplicates_count_once_and_full_redelivery_changes_nothing(
    kafka_bootstrap: str, database_factory: DatabaseFactory, migrated_template: str
) -> None:
    messages = simulated_stream(organizations=40, events=1500, support_share=0.08, seed=13)
    twice = doubled(messages)
    assert len(twice) == 2 * len(messages) == 3000
    counts = expected_event_counts(messages)
    usage_only, mixed = organizations_by_topic(messages)

    once_db = await database_factory(template=migrated_template)
    await _consume(once_db, kafka_bootstrap, await make_topics(kafka_bootstrap), messages)
    once = await snapshot(once_db)

    twice_db = await database_factory(template=migrated_template)
    topics = await make_topics(kafka_bootstrap)
    first, group = await _consume(twice_db, kafka_bootstrap, topics, twice)
    after_twice = await snapshot(twice_db)

    # exact counts: each event applied once, the second copies skipped as duplicates
    assert len(after_twice.processed_events) == 1500
    assert {o: s["document"]["event_count"] for o, s in after_twice.states.items()} == counts
    assert sum(o.applied for o in first.outcomes) == 1500
    assert sum(o.duplicates for o in first.outcomes) == 1500
    assert _handled(first.outcomes) == len(twice)
    # the same state as producing once
    assert_same_event_set_state(once, after_twice)
    assert_identical_for(once, after_twice, usage_only)
    # one history row per organization and event-time day: the usage-only organizations'
    # rows are the same whatever the batching (compared above)
    assert set(after_twice.history_by_cause) == {"events"}
    assert len(mixed) > 5 and len(after_twice.interactions) > 20

    # full redelivery: forget the stored offsets; the same group re-reads from the start
    markers = await _write_markers(twice_db)
    conn = await asyncpg.connect(twice_db)
    try:
        deleted = await conn.execute(
            "DELETE FROM consumer_offsets WHERE consumer_group = $1", group
        )
    finally:
        await conn.close()
    assert deleted == f"DELETE {len(after_twice.offsets)}"
    settings = service_settings(twice_db, kafka_bootstrap, topics, group=group)
    async with running_service(settings) as again:
        await wait_caught_up(twice_db, kafka_bootstrap, group, [topics.usage, topics.support])
        await wait_outcomes(again, lambda out: _handled(out) >= len(twice))
    after_redelivery = await snapshot(twice_db)

    assert await stored_offsets(twice_db, group) == after_twice.offsets
    assert await _write_markers(twice_db) == markers
    _assert_snapshots_equal(after_twice, after_redelivery)
    # the batch outcomes show every record read again and skipped as a duplicate
    assert sum(o.records for o in again.outcomes) >= len(twice)
    assert sum(o.applied for o in again.outcomes) == 0
    assert sum(o.organizations_rescored for o in again.outcomes) == 0
    assert sum(o.milestones for o in again.outcomes) == 0
    assert not any(o.alerts for o in again.outcomes)
    assert sum(o.duplicates for o in again.outcomes) == _handled(again.outcomes) == len(twice)
    by_topic: dict[str, int] = {}
    for outcome in again.outcomes:
        for topic, n in outcome.duplicates_by_topic.items():
            by_topic[topic] = by_topic.get(topic, 0) + n
    support_records = sum(2 for m in messages if m.topic_kind == "support")
    assert by_topic == {topics.usage: len(twice) - support_records, topics.support: support_records}


def _assert_snapshots_equal(a: Snapshot, b: Snapshot) -> None:
    assert b.processed_events == a.processed_events
    assert b.states == a.states
    assert b.milestones == a.milestones
    assert b.interactions == a.interactions
    assert b.health == a.health
    assert b.alerts == a.alerts
    assert b.history_by_cause == a.history_by_cause
    assert b.history == a.history
    assert b.offsets == a.offsets
