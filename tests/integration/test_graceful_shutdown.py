"""SIGTERM while consuming: a clean exit (code 0, quickly), and a restart loses nothing.

`healthscore serve` runs as a child process (tests.utils.harness.ServiceProcess)
while a simulated stream is being produced. It gets SIGTERM mid-stream,
must exit 0 within a few seconds and log `service_stopped`; a restart with
the same consumer group resumes from the stored offsets, so every event is
applied exactly once across the two runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from faststream.__about__ import SERVICE_NAME as FASTSTREAM_CLIENT_ID

from healthscore.service.app import START_UP_STOP_SECONDS
from healthscore_lab.simulator import produce
from tests.utils.fault_tools import log_events
from tests.utils.harness import (
    ServiceProcess,
    make_producer,
    make_topics,
    service_settings,
)
from tests.utils.kafka_relay import RelayedBroker, relayed_broker
from tests.utils.scenarios import (
    expected_event_counts,
    simulated_stream,
    snapshot,
    stored_offsets,
    wait_caught_up,
    wait_processed,
)

STOP_WITHIN_SECONDS = 10.0
JOIN_GROUP = 11  # the Kafka API key


async def test_sigterm_stops_cleanly_and_restart_resumes(
    migrated_database: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    topics = await make_topics(kafka_bootstrap, partitions=4)
    settings = service_settings(migrated_database, kafka_bootstrap, topics, batch_max_records=200)
    messages = simulated_stream(organizations=40, events=6000, support_share=0.08, seed=23)
    counts = expected_event_counts(messages)
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"

    service = ServiceProcess(settings)
    producer = await make_producer(kafka_bootstrap)
    try:
        service.start(str(first_log))
        # a first slice, to know the service consumes; then the rest, paced, so that the
        # service is mid-stream when it is told to stop
        await produce(messages[:200], producer, topics.usage, topics.support)
        await wait_processed(migrated_database, 200, timeout=60.0)
        producing = asyncio.create_task(
            produce(messages[200:], producer, topics.usage, topics.support, rate=800.0)
        )
        await wait_processed(migrated_database, 1500, timeout=60.0)
        assert not producing.done(), "the stream ended before the stop; slow it down"
        assert service.process is not None
        stopping = time.monotonic()
        service.process.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(service.process.wait, 30)
        stop_seconds = time.monotonic() - stopping
        await producing
    finally:
        service.kill()
        await producer.stop()

    assert code == 0
    assert stop_seconds < STOP_WITHIN_SECONDS
    first_events = log_events(first_log)
    names = [e.get("event") for e in first_events]
    assert "service_stopped" in names
    assert "batch_failed_will_retry" not in names

    # what the first run committed is consistent: effects and offsets together
    at_stop = await snapshot(migrated_database)
    applied_first = len(at_stop.processed_events)
    assert 1500 <= applied_first < len(messages)
    assert sum(s["document"]["event_count"] for s in at_stop.states.values()) == applied_first
    assert sum(at_stop.offsets.values()) == applied_first  # no duplicates or bad messages

    restarted = ServiceProcess(settings)
    try:
        restarted.start(str(second_log))
        await wait_caught_up(
            migrated_database,
            kafka_bootstrap,
            settings.consumer_group,
            [topics.usage, topics.support],
            timeout=90.0,
        )
    finally:
        restarted.terminate()
    assert restarted.process is not None and restarted.process.returncode == 0

    final = await snapshot(migrated_database)
    assert len(final.processed_events) == len(messages) == sum(counts.values())
    assert at_stop.processed_events <= final.processed_events
    assert {org: s["document"]["event_count"] for org, s in final.states.items()} == counts
    stored = await stored_offsets(migrated_database, settings.consumer_group)
    assert sum(stored.values()) == len(messages)

    # the restart began at the stored offsets: nothing it read had been applied before
    batches = [e for e in log_events(second_log) if e.get("event") == "batch_committed"]
    assert batches
    assert sum(int(b.get("applied", 0)) for b in batches) == len(messages) - applied_first
    assert sum(int(b.get("duplicates", 0)) for b in batches) == 0
    print(
        f"\nSIGTERM to exit: {stop_seconds:.2f}s; applied {applied_first} before the stop,"
        f" {len(messages) - applied_first} after the restart"
    )


@contextlib.asynccontextmanager
async def _serving_through(
    broker: RelayedBroker, database: str, log: Path
) -> AsyncIterator[ServiceProcess]:
    """`serve` on `database`, its broker `broker`, its log in `log`; killed at the end."""
    topics = await make_topics(broker.bootstrap, partitions=1)
    service = ServiceProcess(service_settings(database, broker.bootstrap, topics))
    try:
        yield service
    finally:
        service.kill()


@pytest.mark.parametrize("broker_goes", [True, False], ids=["broker-gone", "broker-up"])
async def test_sigterm_during_a_start_up_that_cannot_end_stops_the_process(
    migrated_database: str, tmp_path: Path, broker_goes: bool
) -> None:
    """`serve` starts, its consumer group never forms (a relay holds every JoinGroup, as
    a broker whose coordinator does not answer, or the embedded broker's stuck group,
    does: aiokafka's start waits for its first assignment), and the broker goes away or
    stays, answering everything else. The start can never end; a SIGTERM cancels it and
    the process exits 0 within seconds. Before, a signal during start-up waited for the
    start to end (the `serve` processes of a killed bench ran on for good); and with the
    broker up, the stop waited for the held JoinGroup's request timeout (40 s): now
    for the consumer's grace (`JOIN_GRACE_SECONDS`, 5 s), then it drops its connections."""
    log = tmp_path / "serve.log"
    async with (
        relayed_broker() as broker,
        _serving_through(broker, migrated_database, log) as service,
    ):
        broker.relay.hold_api(JOIN_GROUP)
        service.start(str(log))
        # up to the held join: the background loops run (readiness is logged)
        deadline = time.monotonic() + 60
        while not log_events(log, "readiness_changed"):
            assert service.alive, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "serve did not get as far as its loops"
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)
        if broker_goes:
            await broker.stop()
        await asyncio.sleep(2.0)
        assert not log_events(log, "service_started"), "the group formed"
        assert service.process is not None
        stopping = time.monotonic()
        service.process.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(service.process.wait, START_UP_STOP_SECONDS + 15)
        stop_seconds = time.monotonic() - stopping
    names = [e.get("event") for e in log_events(log)]
    assert stop_seconds < STOP_WITHIN_SECONDS, (stop_seconds, names[-10:])
    assert code == 0, log.read_text()[-3000:]
    assert "start_up_interrupted" in names
    # the held join is cut off after the consumer's grace, only while the broker answers
    assert ("consumer_start_abandoned" in names) is not broker_goes
    assert "service_started" not in names
    assert names[-1] == "service_stopped"
    assert "Traceback" not in log.read_text()


@pytest.mark.slow
async def test_a_broker_that_stops_answering_the_consumers_client_at_start_is_one_line(
    migrated_database: str, tmp_path: Path
) -> None:
    """The broker answers the service's producer but never FastStream's client (the
    relay holds what its connections send): the start fails after the request timeout
    with one line naming the setting, not a traceback (before, KafkaConnectionError
    from FastStream's producer escaped). 40 s of the clients' request timeout: slow."""
    log = tmp_path / "serve.log"
    async with (
        relayed_broker() as broker,
        _serving_through(broker, migrated_database, log) as service,
    ):
        broker.relay.stall(FASTSTREAM_CLIENT_ID)
        service.start(str(log))
        assert service.process is not None
        code = await asyncio.to_thread(service.process.wait, 120)
    text = log.read_text()
    assert code == 2, text[-3000:]
    assert "error: cannot reach the Kafka brokers at KAFKA_BOOTSTRAP_SERVERS" in text
    assert "Traceback" not in text
