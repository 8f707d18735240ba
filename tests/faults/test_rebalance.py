"""Two `healthscore serve` processes in one consumer group, joined and left mid-run.

The first process starts alone; the second joins while the stream flows (a
rebalance); later the first is stopped with SIGTERM (another rebalance) and
the second finishes the stream. The same stream is then consumed by one
in-process service into another fresh database. Both databases must hold the
same truth: the processed event set, per-organization aggregates, milestones,
support interactions and scores.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.utils.fault_tools import (
    Oracle,
    RecordingProducer,
    assert_alerts_published,
    assert_exactly_once,
    background,
    diff_rows,
    log_events,
    log_tail,
    output_topics,
    produce_stream,
    pure_run,
    simulated_stream,
    snapshot,
    wait_all_applied,
    wait_logged,
)
from tests.utils.harness import (
    ServiceProcess,
    Topics,
    make_producer,
    make_topics,
    running_service,
    service_settings,
)

pytestmark = pytest.mark.faults

RATE = 1200.0  # messages/s
SLOW_RATE = 300.0  # messages/s while the second process starts and joins


def assigned_partitions(service: ServiceProcess) -> list[list[str]]:
    assert service.log_path is not None
    return [e["partitions"] for e in log_events(service.log_path, "partitions_assigned")]


async def test_two_processes_with_rebalances_match_a_single_process(
    migrated_database: str,
    database_factory: Callable[..., Awaitable[str]],
    migrated_template: str,
    kafka_bootstrap: str,
    tmp_path: Path,
) -> None:
    topics = await make_topics(kafka_bootstrap, partitions=4)
    # every process applies each organization's usage and support events in event-time
    # order (`ALIGNMENT_LIVE_LAG_RECORDS=0`: always align), so the partitions' hand-overs
    # cannot move a decision: alerts and churn must equal the single process's
    settings = service_settings(
        migrated_database, kafka_bootstrap, topics, alignment_live_lag_records=0
    )
    messages = simulated_stream(events=12000, organizations=80, seed=31)
    oracle = Oracle.of(messages)
    third = len(messages) // 3
    parts = messages[:third], messages[third : 2 * third], messages[2 * third :]
    aligned = {"ALIGNMENT_LIVE_LAG_RECORDS": "0"}
    first, second = ServiceProcess(settings, aligned), ServiceProcess(settings, aligned)
    raw_producer = await make_producer(kafka_bootstrap)
    producer = RecordingProducer(raw_producer)
    timings: dict[str, float] = {}
    started = time.monotonic()
    try:
        first.start(str(tmp_path / "first.log"))
        await wait_logged(first, "partitions_assigned", 1, 60)
        await produce_stream(producer, parts[0], topics, rate=RATE)

        # the second process joins while the second third flows in, slowly enough
        # to span its start-up (imports, pool, group join: 5-10 s on a busy machine)
        second.start(str(tmp_path / "second.log"))
        async with background(produce_stream(producer, parts[1], topics, rate=SLOW_RATE)) as middle:
            await wait_logged(second, "partitions_assigned", 1, 60)
            timings["second_joined"] = time.monotonic() - started
            joined_mid_stream = not middle.done()
            await asyncio.wait_for(middle, 60)

        # the first leaves (SIGTERM, graceful) while the last third flows in
        async with background(produce_stream(producer, parts[2], topics, rate=RATE)) as last:
            await asyncio.sleep(len(parts[2]) / RATE / 3)
            left_mid_stream = not last.done()  # told to leave while the stream flows
            await asyncio.to_thread(first.terminate)
            timings["first_left"] = time.monotonic() - started
            await asyncio.wait_for(last, 60)
        assert first.process is not None and first.process.returncode == 0
        await wait_logged(second, "partitions_assigned", 2, 60)

        def second_alive() -> None:
            assert second.alive, f"serve exited: {log_tail(str(second.log_path))}"

        await wait_all_applied(
            migrated_database,
            oracle,
            timeout=60,
            also=second_alive,
            last_offsets=producer.last_offsets,
            group=settings.consumer_group,
        )
        assert second.alive
        timings["distributed_done"] = time.monotonic() - started
    finally:
        first.kill()
        second.terminate()
        await raw_producer.stop()

    await assert_exactly_once(
        migrated_database, oracle, producer.last_offsets, settings.consumer_group
    )
    # the rebalances happened while records flowed (else this is two quiet hand-overs)
    assert joined_mid_stream, "the second process joined after the middle third was sent"
    assert left_mid_stream, "the first process left after the last third was sent"
    await assert_alerts_published(kafka_bootstrap, migrated_database, topics.alerts)
    # both processes did real work, and the second ended up with every partition
    assert first.log_path is not None and second.log_path is not None
    work = {
        name: sum(e["applied"] for e in log_events(path, "batch_committed"))
        for name, path in (("first", first.log_path), ("second", second.log_path))
    }
    assert work["first"] > 0 and work["second"] > 0, work
    assert len(assigned_partitions(second)[-1]) == 12  # 4 partitions of 3 input topics

    # the same stream through one in-process service, into another fresh database
    reference_db = await database_factory(template=migrated_template)
    alerts_topic, health_topic = await output_topics(kafka_bootstrap)
    reference_topics = Topics(
        topics.usage, topics.support, alerts_topic, health_topic, topics.profile
    )
    reference = service_settings(
        reference_db, kafka_bootstrap, reference_topics, alignment_live_lag_records=0
    )
    async with running_service(reference):
        await wait_all_applied(reference_db, oracle, timeout=60)
    timings["reference_done"] = time.monotonic() - started

    distributed, single = await snapshot(migrated_database), await snapshot(reference_db)
    assert distributed["processed_events"] == single["processed_events"]
    assert distributed["org_aggregates"] == single["org_aggregates"]
    assert distributed["milestones"] == single["milestones"]
    assert distributed["support_interactions"] == single["support_interactions"]
    assert diff_rows(distributed["scores"], single["scores"]) == []

    # and they are the pure core's scores for the stream
    wire = pure_run(messages)
    assert {str(r["organization_id"]): float(r["health_score"]) for r in single["scores"]} == (
        wire.scores
    )

    # aligned by event time, the hand-overs move no decision: churn and every alert
    # (id, kind, episode, the payload) equal the single process's. `caused_by` is the
    # organization's newest event ids in the order applied, and the two topics' events
    # of one instant may be applied in either order: compared as a set (seen: 2 runs in
    # 14 listed the same 20 ids in another order)
    churn = diff_rows(distributed["churn"], single["churn"])
    alerts = diff_rows(
        _caused_by_as_sets(distributed["alerts"]),
        _caused_by_as_sets(single["alerts"]),
        key="alert_id",
    )
    counts = {name: len(snap["alerts"]) for name, snap in (("two", distributed), ("one", single))}
    evidence = (
        f"churn diffs {len(churn)}, alerts two/one process {counts['two']}/{counts['one']}"
        f"; first differences: churn {churn[:2]}, alerts {_payload_differences(alerts[:2])}"
    )
    assert single["alerts"], "no alert: the comparison would hold for nothing"
    assert not churn and not alerts, evidence
    # and the single process decided as the pure core on the stream's own order
    assert {str(r["alert_id"]) for r in single["alerts"]} == wire.alerts, evidence
    print(
        f"\nrebalance: first/second applied {work['first']}/{work['second']}; "
        f"assignments first {[len(p) for p in assigned_partitions(first)]}, "
        f"second {[len(p) for p in assigned_partitions(second)]}; joined/left mid-stream "
        f"{joined_mid_stream}/{left_mid_stream}; "
        + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items())
        + f"; {evidence}"
    )


def _payload_differences(diffs: list[tuple[Any, dict[str, tuple[Any, Any]]]]) -> list[Any]:
    """Per alert, the payload's keys whose values differ (two processes, one)."""
    out: list[Any] = []
    for alert_id, columns in diffs:
        left, right = columns.get("payload", ({}, {}))
        left, right = left or {}, right or {}
        keys = {
            k: (left.get(k), right.get(k))
            for k in set(left) | set(right)
            if left.get(k) != right.get(k)
        }
        out.append((str(alert_id), {c: v for c, v in columns.items() if c != "payload"}, keys))
    return out


def _caused_by_as_sets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {**row, "payload": {**row["payload"], "caused_by": set(row["payload"]["caused_by"])}}
        for row in rows
    ]
