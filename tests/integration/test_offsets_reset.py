"""`healthscore offsets-reset` against the real database and broker.

The story it exists for: the input topics are recreated while the database
survives, so the stored offsets lie beyond the new logs' ends. The command
shows that, changes nothing without --yes, and with it the service reads the
new topics from their start.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid

import asyncpg
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from structlog.testing import capture_logs

from healthscore.service.app import ServiceOptions
from tests.utils.harness import (
    Topics,
    make_producer,
    make_topics,
    running_service,
    service_settings,
)
from tests.utils.scenarios import (
    expected_event_counts,
    produce_stream,
    simulated_stream,
    stored_offsets,
    wait_caught_up,
)


def _cli_env(database_url: str, bootstrap: str, topics: Topics) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("MIGRATION_DATABASE_URL", "CONSUMER_GROUP"):
        env.pop(name, None)
    env.update(
        {
            "DATABASE_URL": database_url,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "USAGE_TOPIC": topics.usage,
            "SUPPORT_TOPIC": topics.support,
        }
    )
    return env


async def _reset(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "healthscore.cli", "offsets-reset", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def _recreate(bootstrap: str, names: list[str], partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics(names)
        await admin.create_topics([NewTopic(n, partitions, 1) for n in names])
    finally:
        await admin.close()


async def _applied_events(database_url: str, event_ids: list[str]) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        count = await conn.fetchval(
            "SELECT count(*) FROM processed_events WHERE event_id = ANY($1::uuid[])",
            [uuid.UUID(e) for e in event_ids],
        )
    finally:
        await conn.close()
    return int(count)


async def test_recreated_topics_are_read_from_their_start_after_reset_to_earliest(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    topics = await make_topics(kafka_bootstrap, partitions=2)
    inputs = [topics.usage, topics.support]
    group = f"g-{uuid.uuid4().hex[:8]}"
    settings = service_settings(migrated_database, kafka_bootstrap, topics, group=group)

    first = simulated_stream(organizations=20, events=600, seed=101)
    await produce_stream(kafka_bootstrap, topics, first)
    async with running_service(settings):
        await wait_caught_up(migrated_database, kafka_bootstrap, group, inputs)
    before = await stored_offsets(migrated_database, group)

    # the topics are recreated (empty, then a shorter stream); the database stays
    await _recreate(kafka_bootstrap, inputs, partitions=2)
    second = simulated_stream(organizations=5, events=80, seed=202)
    await produce_stream(kafka_bootstrap, topics, second)
    second_ids = sorted({m.event_id for m in second if m.valid and m.event_id is not None})
    assert await _applied_events(migrated_database, second_ids) == 0

    env = _cli_env(migrated_database, kafka_bootstrap, topics)
    dry = await _reset(env, "--group", group, "--to-earliest")
    assert dry.returncode == 0, dry.stderr
    assert "stored offset is above the high watermark" in dry.stdout
    assert "dry run: nothing changed" in dry.stdout
    assert await stored_offsets(migrated_database, group) == before

    applied = await _reset(env, "--group", group, "--to-earliest", "--yes")
    assert applied.returncode == 0, applied.stderr
    assert f"applied: {len(before)} partition(s)" in applied.stdout
    assert await stored_offsets(migrated_database, group) == {}

    async with running_service(settings):
        await wait_caught_up(migrated_database, kafka_bootstrap, group, inputs)
    # every event of the new topics was applied (they were never seen before)
    assert await _applied_events(migrated_database, second_ids) == len(second_ids)
    assert sum(expected_event_counts(second).values()) == len(second_ids)


async def test_a_topic_recreated_under_the_running_service_is_refused_not_silently_waited_on(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    # the refusal on assignment does not see a topic recreated later: the consumer
    # waited at its old position (past the new log's end) for records that never come,
    # with lag 0, /readyz ready and nothing logged, however many records arrived
    topics = await make_topics(kafka_bootstrap, partitions=1)
    group = f"g-{uuid.uuid4().hex[:8]}"
    settings = service_settings(
        migrated_database, kafka_bootstrap, topics, group=group, readiness_interval_seconds=0.5
    )
    options = ServiceOptions(run_sweep=False, create_topics=False, gauge_interval_seconds=0.5)
    first = simulated_stream(organizations=5, events=80, seed=303, support_share=0.0)
    second = simulated_stream(organizations=3, events=20, seed=404, support_share=0.0)
    second_ids = sorted({m.event_id for m in second if m.valid and m.event_id is not None})
    with capture_logs() as logs:
        async with running_service(settings, options) as service:
            await produce_stream(kafka_bootstrap, topics, first)
            await wait_caught_up(migrated_database, kafka_bootstrap, group, [topics.usage])
            await _recreate(kafka_bootstrap, [topics.usage], partitions=1)
            await produce_stream(kafka_bootstrap, topics, second)
            key = (topics.usage, 0)
            for _ in range(600):
                latest = service.readiness.latest
                # not the rebalance's "no input partitions assigned (yet)" while the
                # topic is deleted and created: the refusal of the recreated one
                if (
                    latest is not None
                    and "partitions" in latest.failed
                    and latest.checks["partitions"].startswith("not consuming")
                ):
                    break
                await asyncio.sleep(0.1)
            assert key in service.offsets.refused, service.offsets.refused
            assert latest is not None
            assert latest.checks["partitions"].startswith(f"not consuming {topics.usage}:0: ")
            assert "above the high watermark" in latest.checks["partitions"]
            refused = service.metrics.partitions_refused.labels(topics.usage, "0")
            assert refused._value.get() == 1
    assert [e["partition"] for e in logs if e["event"] == "partition_refused"] == [0]
    assert await _applied_events(migrated_database, second_ids) == 0

    # the runbook: offsets-reset --to-earliest with the service stopped, then start it
    env = _cli_env(migrated_database, kafka_bootstrap, topics)
    applied = await _reset(env, "--group", group, "--to-earliest", "--topic", topics.usage, "--yes")
    assert applied.returncode == 0, applied.stderr
    async with running_service(settings, options):
        await wait_caught_up(migrated_database, kafka_bootstrap, group, [topics.usage])
    assert await _applied_events(migrated_database, second_ids) == len(second_ids)


async def test_to_latest_uses_true_high_watermarks_and_to_offset_checks_the_log(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    topics = await make_topics(kafka_bootstrap, partitions=2)
    producer = await make_producer(kafka_bootstrap)
    try:
        # many records per produce request: where the embedded broker's
        # ListOffsets answer lags behind the high watermark
        futures = [await producer.send(topics.usage, b"x%d" % i, partition=0) for i in range(250)]
        await asyncio.gather(*futures)
        for i in range(3):
            await producer.send_and_wait(topics.usage, b"y%d" % i, partition=1)
    finally:
        await producer.stop()
    group = f"g-{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(migrated_database)
    try:
        await conn.execute(
            "INSERT INTO consumer_offsets (consumer_group, topic, partition, next_offset) "
            "VALUES ($1, $2, 0, 9000), ($1, $2, 1, 1)",
            group,
            topics.usage,
        )
    finally:
        await conn.close()
    env = _cli_env(migrated_database, kafka_bootstrap, topics)

    latest = await _reset(env, "--group", group, "--topic", topics.usage, "--to-latest", "--yes")
    assert latest.returncode == 0, latest.stderr
    assert "warning: 252 record(s) will be skipped" in latest.stdout
    assert await stored_offsets(migrated_database, group) == {
        (topics.usage, 0): 250,
        (topics.usage, 1): 3,
    }

    outside = await _reset(
        env, "--group", group, "--topic", topics.usage, "--to-offset", "100", "--yes"
    )
    assert outside.returncode == 2
    assert f"lies outside the log of {topics.usage}:1 (0..3)" in outside.stderr
    assert "Traceback" not in outside.stderr

    one = await _reset(
        env,
        "--group",
        group,
        "--topic",
        topics.usage,
        "--partition",
        "0",
        "--to-offset",
        "100",
        "--yes",
    )
    assert one.returncode == 0, one.stderr
    assert "reads 150 record(s) again" in one.stdout
    assert await stored_offsets(migrated_database, group) == {
        (topics.usage, 0): 100,
        (topics.usage, 1): 3,
    }

    # a mistyped group: nothing stored, said so (a group may rightly start here)
    typo = await _reset(env, "--group", group + "x", "--topic", topics.usage, "--to-earliest")
    assert typo.returncode == 0, typo.stderr
    assert f"note: consumer group '{group}x' has no stored offsets" in typo.stdout

    same = await _reset(env, "--group", group, "--topic", topics.usage, "--to-latest")
    assert same.returncode == 0, same.stderr
    assert "dry run" in same.stdout
