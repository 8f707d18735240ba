"""SIGTERM to `healthscore serve` while its network path to PostgreSQL delivers
nothing: the process ends inside the pod's grace period, and a restart applies every
event exactly once.

A path that stops delivering (a partition, a dead router; a frozen host) leaves the
service's connections open and their reads waiting: no error comes, and asyncpg's
release of a connection, which the pool's close waits for, has no time limit. The
stop used to wait on them for good, until the kubelet's SIGKILL. The server is the
session's real PostgreSQL behind a relay of the test's own; `serve` is a real child
process stopped by a real SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from pathlib import Path

import pytest

from healthscore_lab.simulator import produce
from tests.integration.test_stop_in_broker_outage import GRACE_PERIOD_SECONDS
from tests.utils.fault_tools import log_events
from tests.utils.harness import ServiceProcess, make_producer, make_topics, service_settings
from tests.utils.postgres_relay import PostgresRelay
from tests.utils.scenarios import (
    expected_event_counts,
    simulated_stream,
    snapshot,
    stored_offsets,
    wait_caught_up,
    wait_processed,
)

# the kubelet's SIGKILL comes at the grace period: the stop ends before it, with room
STOP_WITHIN_SECONDS = GRACE_PERIOD_SECONDS - 10


class SilentPath:
    """A TCP path to PostgreSQL that can stop delivering (connections stay open, no
    byte passes either way) and then be cut (every connection closed, as when the
    partition outlives the connections: the server rolls back what they began)."""

    def __init__(self, database_url: str) -> None:
        self._database_url = database_url
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self._target: tuple[str, int] = ("", 0)
        self.port = 0

    async def start(self) -> None:
        relay = await PostgresRelay.to(self._database_url)  # for its reading of the URL
        self._target = relay._target
        await relay.close()
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def url(self) -> str:
        relay = PostgresRelay(*self._target)
        relay.port = self.port
        return relay.url(self._database_url)

    def go_silent(self) -> None:
        self._flowing.clear()

    def speak_again(self) -> None:
        """Deliver again what was held, and go on (a frozen server resumed)."""
        self._flowing.set()

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        for writer in self._writers:
            writer.transport.abort()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host, port = self._target
        if host.startswith("/"):
            up_reader, up_writer = await asyncio.open_unix_connection(f"{host}/.s.PGSQL.{port}")
        else:
            up_reader, up_writer = await asyncio.open_connection(host, port)
        self._writers += [writer, up_writer]
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(source, sink))
            self._tasks.add(task)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        while data := await source.read(65536):
            await self._flowing.wait()  # held while silent: `speak_again` or `cut` ends it
            sink.write(data)
            await sink.drain()
        sink.close()


async def test_sigterm_while_postgres_is_unreachable_stops_within_the_grace_period(
    migrated_database: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    path = SilentPath(migrated_database)
    await path.start()
    topics = await make_topics(kafka_bootstrap, partitions=2)
    settings = service_settings(path.url(), kafka_bootstrap, topics, batch_max_records=50)
    messages = simulated_stream(organizations=30, events=3000, support_share=0.08, seed=78)
    counts = expected_event_counts(messages)
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    service = ServiceProcess(settings)
    producer = await make_producer(kafka_bootstrap)
    try:
        await produce(messages[:1000], producer, topics.usage, topics.support)
        service.start(str(first_log))
        await wait_processed(migrated_database, 600, timeout=90.0)
        rest = asyncio.create_task(
            produce(messages[1000:], producer, topics.usage, topics.support, rate=400.0)
        )
        await wait_processed(migrated_database, 1300, timeout=60.0)
        path.go_silent()  # mid-stream: a batch is in flight, or the next one soon
        await asyncio.sleep(5)
        assert service.process is not None and service.alive
        stopping = time.monotonic()
        service.process.send_signal(signal.SIGTERM)
        try:
            code: int | None = await asyncio.to_thread(
                service.process.wait, GRACE_PERIOD_SECONDS + 30
            )
        except Exception:
            code = None  # still stopping: SIGKILLed below
        stop_seconds = time.monotonic() - stopping
        await rest
    finally:
        service.kill()
        await path.cut()
        with contextlib.suppress(Exception):
            await producer.stop()
    print(f"\nSIGTERM to exit with PostgreSQL unreachable: {stop_seconds:.1f}s")
    assert code == 0, f"exit {code} after {stop_seconds:.1f}s"
    assert stop_seconds < STOP_WITHIN_SECONDS, f"stopped after {stop_seconds:.1f}s"
    assert log_events(first_log, "service_stopped")

    # what the first run committed is whole: each batch's effects with its offsets
    await asyncio.sleep(1)  # the cut connections' backends end, rolling back
    at_stop = await snapshot(migrated_database)
    applied_first = len(at_stop.processed_events)
    assert 1300 <= applied_first < len(messages)
    assert sum(s["document"]["event_count"] for s in at_stop.states.values()) == applied_first
    offsets = await stored_offsets(migrated_database, settings.consumer_group)
    assert sum(offsets.values()) == applied_first

    # PostgreSQL reachable again: the restart applies the rest, once
    restarted = ServiceProcess(
        service_settings(
            migrated_database,
            kafka_bootstrap,
            topics,
            group=settings.consumer_group,
            batch_max_records=50,
        )
    )
    try:
        restarted.start(str(second_log))
        await wait_caught_up(
            migrated_database,
            kafka_bootstrap,
            settings.consumer_group,
            [topics.usage, topics.support],
            timeout=120.0,
        )
    finally:
        restarted.terminate()
    final = await snapshot(migrated_database)
    assert len(final.processed_events) == len(messages) == sum(counts.values())
    assert {org: s["document"]["event_count"] for org, s in final.states.items()} == counts
    batches = [e for e in log_events(second_log) if e.get("event") == "batch_committed"]
    assert sum(int(b.get("applied", 0)) for b in batches) == len(messages) - applied_first
    assert sum(int(b.get("duplicates", 0)) for b in batches) == 0


pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")
