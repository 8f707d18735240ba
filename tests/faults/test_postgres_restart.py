"""PostgreSQL crashes (`pg_ctl stop -m immediate`) and comes back while batches flow.

`healthscore serve` runs as a child process against the session's embedded
PostgreSQL. The server is stopped crash-like in the middle of a paced stream,
stays down for two seconds and restarts on the same data directory. The
service is never restarted: its failed batches roll back, rewind and retry,
and at the end every valid event is applied exactly once.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from healthscore_lab.devservices import Services
from tests.utils.fault_tools import (
    Oracle,
    RecordingProducer,
    assert_alerts_published,
    assert_exactly_once,
    background,
    dead_letter_sources,
    log_events,
    log_tail,
    log_time,
    produce_stream,
    simulated_stream,
    wait_all_applied,
    wait_logged,
)
from tests.utils.harness import (
    ServiceProcess,
    make_producer,
    make_topics,
    ops_get,
    service_settings,
)
from tests.utils.scenarios import wait_processed

pytestmark = pytest.mark.faults

RATE = 1500.0  # messages/s: about 8 s of stream
DOWN_FOR = 2.0  # seconds PostgreSQL stays down


async def test_service_survives_a_postgres_crash_restart(
    services: Services, migrated_database: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    if services.postgres_server is None:
        pytest.skip("needs the embedded PostgreSQL to restart")
    topics = await make_topics(kafka_bootstrap, partitions=4)
    settings = service_settings(migrated_database, kafka_bootstrap, topics)
    messages = simulated_stream(events=12000, organizations=80, seed=23)
    oracle = Oracle.of(messages)
    log_path = tmp_path / "serve.log"
    service = ServiceProcess(settings)
    raw_producer = await make_producer(kafka_bootstrap)
    producer = RecordingProducer(raw_producer)

    def alive() -> None:
        assert service.alive, f"serve exited: {log_tail(log_path)}"

    try:
        service.start(str(log_path))
        assert service.process is not None
        pid = service.process.pid
        deadline = time.monotonic() + 60
        while not log_events(log_path, "partitions_assigned"):
            alive()
            assert time.monotonic() < deadline, "serve never got its partitions"
            await asyncio.sleep(0.2)

        async with background(produce_stream(producer, messages, topics, rate=RATE)) as stream:
            applied_before = await wait_processed(
                migrated_database, len(oracle.event_ids) // 3, 60, also=alive
            )
            old_pg = services.postgres_pid
            crashed_at = datetime.now(UTC)
            started = time.monotonic()
            new_pg = await asyncio.to_thread(services.restart_postgres, "immediate", DOWN_FOR)
            restart_s = time.monotonic() - started
            back_at = datetime.now(UTC)
            still_streaming = not stream.done()
            await asyncio.wait_for(stream, 60)
        await wait_all_applied(
            migrated_database,
            oracle,
            timeout=60,
            also=alive,
            last_offsets=producer.last_offsets,
            group=settings.consumer_group,
        )

        # the same process did it all, and said it retried
        assert service.alive and service.process.pid == pid
        assert new_pg != old_pg
        retries = log_events(log_path, "batch_failed_will_retry")
        assert retries, "no batch failed: the restart missed the flow"
        committed = log_events(log_path, "batch_committed")
        recovered_at = min(log_time(e) for e in committed if log_time(e) > back_at)
    finally:
        service.terminate()
        await raw_producer.stop()

    await assert_exactly_once(
        migrated_database, oracle, producer.last_offsets, settings.consumer_group
    )
    # no batch applied twice. A batch whose COMMIT reached the WAL just before the
    # crash is not logged (its client saw the crash) and comes back all "replayed",
    # so the logged sum may fall short, never exceed.
    assert sum(e["applied"] for e in committed) <= len(oracle.event_ids)
    assert sum(e["duplicates"] for e in committed) <= oracle.duplicates
    alerts, copies = await assert_alerts_published(
        kafka_bootstrap, migrated_database, topics.alerts
    )
    assert len(await dead_letter_sources(kafka_bootstrap, topics)) == oracle.malformed
    errors = sorted({e["error"] for e in retries})
    print(
        f"\npostgres {old_pg} -> {new_pg}: restart took {restart_s:.1f}s "
        f"(down {DOWN_FOR}s) with {applied_before}/{len(oracle.event_ids)} applied, stream "
        f"{'still flowing' if still_streaming else 'already sent'}; {len(retries)} retries "
        f"({', '.join(errors)}), first commit {(recovered_at - back_at).total_seconds():.1f}s "
        f"after the server was back (crash at {crashed_at:%H:%M:%S}); "
        f"{sum(e['replayed_skipped'] for e in committed)} replayed records skipped; "
        f"{alerts} alerts ({copies} copies)"
    )


async def test_a_rebalance_while_postgres_restarts_leaves_the_new_owner_ready(
    services: Services, migrated_database: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Replica B takes A's partitions over (A stopped) while PostgreSQL is down: B's
    assignment cannot read the stored offsets then. aiokafka logs a failed assignment
    callback and goes on, so B used to consume every partition without knowing it held
    them (not ready, Kafka commits dropped, refusals skipped) until the next rebalance.
    The assignment waits for PostgreSQL instead: B ends ready, holding all of them."""
    if services.postgres_server is None:
        pytest.skip("needs the embedded PostgreSQL to restart")
    topics = await make_topics(kafka_bootstrap, partitions=4)
    settings = service_settings(migrated_database, kafka_bootstrap, topics)
    first, second = ServiceProcess(settings), ServiceProcess(settings)
    first_log, second_log = tmp_path / "a.log", tmp_path / "b.log"
    try:
        first.start(str(first_log))
        await wait_logged(first, "partitions_assigned", 1, 60)
        second.start(str(second_log))
        await wait_logged(second, "service_started", 1, 60)
        restart = asyncio.ensure_future(
            asyncio.to_thread(services.restart_postgres, "immediate", DOWN_FOR * 3)
        )
        await asyncio.sleep(0.5)  # down: the rebalance below meets the outage
        await asyncio.to_thread(first.terminate)
        await restart
        port = int(log_events(second_log, "service_started")[-1]["ops_port"])
        deadline = time.monotonic() + 30
        status, body = await ops_get(port, "/readyz")
        while status != 200 and time.monotonic() < deadline:
            assert second.alive, log_tail(second_log)
            await asyncio.sleep(0.5)
            status, body = await ops_get(port, "/readyz")
    finally:
        first.kill()
        second.terminate()
    assert log_events(second_log, "partition_assignment_failed_will_retry") or any(
        "failed on partition assignment" in e["event"] for e in log_events(second_log)
    ), "the rebalance missed the outage"
    assert status == 200, body
    assert len(log_events(second_log, "partitions_assigned")[-1]["partitions"]) == 12
