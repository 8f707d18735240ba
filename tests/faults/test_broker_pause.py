"""The broker freezes (SIGSTOP) for 20 seconds mid-stream; the service heals by itself.

Real tansu broker process of the session, frozen and thawed; the service runs
in-process and is never restarted. At the end every valid event is applied
exactly once, every partition's stored offset is at the end of its log, no
batch was applied twice, and every alert is on the alert topic.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable

import pytest

from healthscore_lab.devservices import Services
from tests.utils.fault_tools import (
    Oracle,
    RecordingProducer,
    assert_alerts_published,
    assert_exactly_once,
    background,
    dead_letter_sources,
    produce_stream,
    simulated_stream,
    stopped,
    wait_all_applied,
)
from tests.utils.harness import (
    fetchval,
    make_producer,
    make_topics,
    running_service,
    service_settings,
)
from tests.utils.scenarios import wait_processed

pytestmark = pytest.mark.faults

PAUSE_SECONDS = 20.0
FIRST_PART_RATE = 800.0  # messages/s: about 4 s for the first part


async def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def test_service_recovers_from_a_paused_broker(
    services: Services, migrated_database: str, kafka_bootstrap: str
) -> None:
    if services.broker_process is None:
        pytest.skip("needs the embedded broker process to freeze")
    broker_pid = services.broker_process.pid
    topics = await make_topics(kafka_bootstrap, partitions=4)
    settings = service_settings(migrated_database, kafka_bootstrap, topics)
    messages = simulated_stream(events=8000, organizations=60, seed=11)
    cut = len(messages) * 2 // 5
    oracle, first = Oracle.of(messages), Oracle.of(messages[:cut])
    raw_producer = await make_producer(kafka_bootstrap)
    producer = RecordingProducer(raw_producer)
    try:
        async with running_service(settings) as service:
            await wait_until(lambda: bool(service.offsets.assigned), 60, "assignment")
            # the first part flows in paced; the broker freezes while batches are flowing
            # and while the producer still has sends in flight
            async with background(
                produce_stream(producer, messages[:cut], topics, rate=FIRST_PART_RATE)
            ) as first_part:
                applied_at_pause = await wait_processed(
                    migrated_database, len(first.event_ids) // 4, 60
                )
                with stopped(broker_pid) as paused_at:
                    await asyncio.sleep(PAUSE_SECONDS)
                    applied_while_paused = (
                        await fetchval(migrated_database, "SELECT count(*) FROM processed_events")
                        - applied_at_pause
                    )
                    sent_while_paused = first_part.done()
                resumed = time.monotonic()
                await asyncio.wait_for(first_part, 60)
            paused_for = resumed - paused_at
            await wait_processed(migrated_database, len(first.event_ids), 60, exactly=True)
            caught_up_s = time.monotonic() - resumed
            await produce_stream(producer, messages[cut:], topics)
            await wait_all_applied(
                migrated_database,
                oracle,
                timeout=60,
                last_offsets=producer.last_offsets,
                group=settings.consumer_group,
            )
            outcomes = list(service.outcomes)
            totals = service.outcomes  # since start: not cut to the latest summaries
    finally:
        await raw_producer.stop()

    await assert_exactly_once(
        migrated_database, oracle, producer.last_offsets, settings.consumer_group
    )

    # no batch applied twice: the committed batches add up to the stream exactly (the
    # totals since start: `outcomes` keeps only the latest 200 summaries, which a run
    # of more batches than that would cut short), and a partition's stored offset
    # never moved backwards within the summaries kept
    assert totals.applied == len(oracle.event_ids)
    assert totals.duplicates == oracle.duplicates
    assert totals.rejected == oracle.malformed
    last: dict[tuple[str, int], int] = defaultdict(int)
    for o in outcomes:
        for tp, offset in o.next_offsets.items():
            assert offset >= last[tp], f"{tp} went back from {last[tp]} to {offset}"
            last[tp] = offset

    # the freeze overlapped the work: batches were flowing (part of the first part
    # applied, not all) and the producer still had sends in flight at SIGCONT
    assert 0 < applied_at_pause < len(first.event_ids), applied_at_pause
    assert not sent_while_paused, "the producer finished before the broker froze"
    alerts, copies = await assert_alerts_published(
        kafka_bootstrap, migrated_database, topics.alerts
    )
    assert alerts > 0, "the stream must raise alerts for this test to mean anything"
    assert len(await dead_letter_sources(kafka_bootstrap, topics)) == oracle.malformed
    print(
        f"\nbroker paused {paused_for:.1f}s; {applied_at_pause}/{len(first.event_ids)} of the "
        f"first part applied when frozen, {applied_while_paused} while frozen, producer "
        f"{'done' if sent_while_paused else 'still sending'} at SIGCONT; caught up "
        f"{caught_up_s:.1f}s after SIGCONT; {len(outcomes)} batches, "
        f"{sum(o.skipped_replayed for o in outcomes)} redelivered records skipped; "
        f"{alerts} alerts ({copies} copies on the topic)"
    )
