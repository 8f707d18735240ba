"""The read model keeps moving while the broker is away, and the health feed catches up.

A tansu broker of the test's own is killed for real (SIGKILL) and started again on the
same address (its log is kept in memory: the topic is created again, as a cluster
whose log outlives a broker would still have it); PostgreSQL is real. The projector
commits `customer_health` whether or not the feed is acknowledged, owes the feed of
what the broker did not take (`health_feed_owed`) and publishes each organization's
newest projected score once the broker is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from healthscore.core.scoring.model import default_model
from healthscore.service import projector as projector_module
from healthscore.service.projector import Projector
from healthscore.store.db import create_pool
from healthscore_lab.devservices import free_port, start_embedded_broker, stop_process
from tests.integration.test_live_projection import (
    READ_MODEL,
    _feed,
    _newest_on_the_feed,
    _rows,
    _TakenOverBeforeItsFeed,
)
from tests.integration.test_owned_states import _batches, _Log, _pipeline
from tests.utils.harness import make_topics
from tests.utils.states import stored_states

# the projector's read model of the stored states, as a pass from scratch writes it
_HEALTH = "SELECT organization_id, health_score, scored_at FROM customer_health ORDER BY 1"


@pytest.fixture(autouse=True)
def _short_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    # the pass's wait for the feed and the pause after a failure, shortened for a test
    # (raising=False: the code before the fix has neither)
    monkeypatch.setattr(projector_module, "PASS_FEED_TIMEOUT_SECONDS", 3.0, raising=False)
    monkeypatch.setattr(projector_module, "FEED_PAUSE_SECONDS", 2.0)


async def _producer(bootstrap: str) -> AIOKafkaProducer:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", request_timeout_ms=5000, retry_backoff_ms=200
    )
    await producer.start()
    return producer


async def _recreate(bootstrap: str, topic: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        try:
            await admin.start()
            await admin.create_topics([NewTopic(topic, 1, 1)])
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)
        finally:
            with contextlib.suppress(Exception):
                await admin.close()


async def _table_writes(admin: asyncpg.Connection, table: str) -> tuple[int, int, int]:
    row = await admin.fetchrow(
        "SELECT n_tup_ins, n_tup_upd, n_tup_del FROM pg_stat_user_tables WHERE relname = $1",
        table,
    )
    assert row is not None
    return (row["n_tup_ins"], row["n_tup_upd"], row["n_tup_del"])


async def _flushed(admin: asyncpg.Connection, table: str, at_least: int) -> None:
    """Wait until the statistics show `at_least` rows inserted into `table` (the writers'
    sessions flush their counters when idle)."""
    deadline = time.monotonic() + 10
    while (await _table_writes(admin, table))[0] < at_least:
        assert time.monotonic() < deadline, f"no statistics for {table}"
        await asyncio.sleep(0.2)


async def test_the_read_model_moves_while_the_broker_is_down_and_the_feed_catches_up(
    database_factory: Any, migrated_template: str
) -> None:
    url = await database_factory(template=migrated_template)
    port = free_port()
    bootstrap, broker = start_embedded_broker(port=port)
    topics = await make_topics(bootstrap, partitions=1)
    first, second, third = _batches(_Log())
    model = default_model()
    pool = await create_pool(url, "healthscore_writer", min_size=1, max_size=2)
    admin = await asyncpg.connect(url)
    producer = await _producer(bootstrap)
    try:
        pipeline = _pipeline(pool, producer, 0)
        # the records given up on may land once the broker is back: owed for after that,
        # and counted as the feed being behind from the start (the gauge below)
        projector = Projector(pool, model, producer, topics.health, late_record_bound=30.0)
        await pipeline.process(first)
        assert await projector.project_once() == 6

        # the normal path: the pass writes customer_health and dequeues, nothing owed
        await _flushed(admin, "customer_health", 6)
        assert await _table_writes(admin, "health_feed_owed") == (0, 0, 0)
        assert await _table_writes(admin, "customer_health") == (6, 0, 0)
        assert (await _table_writes(admin, "read_model_pending"))[2] == 6

        broker.kill()  # SIGKILL: no goodbye to any client
        broker.wait(10)
        await pipeline.process(second)  # records fetched before the outage
        assert len(await _rows(url, "SELECT * FROM read_model_pending")) == 6
        assert await projector.staleness() > 0

        # the pass commits the read model without the feed: the queue empties
        await asyncio.wait_for(projector.project_once(), 60)
        assert await _rows(url, "SELECT * FROM read_model_pending") == []
        assert await projector.staleness() == 0.0
        newest = _newest_on_the_feed(await stored_states(admin), model)
        shown = {str(r[0]): (float(r[1]), r[2].isoformat()) for r in await _rows(url, _HEALTH)}
        assert shown == newest
        assert len(await _rows(url, "SELECT * FROM health_feed_owed")) == 6
        assert await projector.feed_owed_age() > 0

        # while the feed is paused a pass owes at once, without waiting for the broker
        await pipeline.process(third)
        started = time.monotonic()
        assert await projector.project_once() == 6
        assert time.monotonic() - started < projector_module.PASS_FEED_TIMEOUT_SECONDS
        assert await _rows(url, "SELECT * FROM read_model_pending") == []
        newest = _newest_on_the_feed(await stored_states(admin), model)
        shown = {str(r[0]): (float(r[1]), r[2].isoformat()) for r in await _rows(url, _HEALTH)}
        assert shown == newest
        assert len(await _rows(url, "SELECT * FROM health_feed_owed")) == 6

        # the broker comes back: the owed feed goes out with each newest score
        bootstrap, broker = start_embedded_broker(port=port)
        await _recreate(bootstrap, topics.health)
        deadline = time.monotonic() + 90
        while await _rows(url, "SELECT * FROM health_feed_owed"):
            assert time.monotonic() < deadline, "the owed health feed was never published"
            with contextlib.suppress(Exception):
                await projector.project_once()
            await asyncio.sleep(0.5)
        assert await projector.feed_owed_age() == 0.0
        assert await _feed(bootstrap, topics.health, 6) == newest
        # and the read model the dashboard reads is the one a pass from scratch writes
        assert len(await _rows(url, READ_MODEL)) == 6
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(producer.stop(), 5)
        await admin.close()
        await pool.close()
        stop_process(broker)


async def test_an_owed_record_never_lands_after_a_newer_projection(
    database_factory: Any, migrated_template: str
) -> None:
    """A pass publishing an owed record (an older projected score) while another process
    (a different PROJECTOR_SHARDS during a rolling deploy: their shard locks do not
    exclude each other) projects the organization's newer state: the newer one cannot be
    written, let alone published, before the owed record is out, so the compacted feed
    ends on the newest score."""
    url = await database_factory(template=migrated_template)
    port = free_port()
    bootstrap, broker = start_embedded_broker(port=port)
    topics = await make_topics(bootstrap, partitions=1)
    first, second, _third = _batches(_Log())
    model = default_model()
    pool = await create_pool(url, "healthscore_writer", min_size=1, max_size=4)
    admin = await asyncpg.connect(url)
    producer = await _producer(bootstrap)
    try:
        pipeline = _pipeline(pool, producer, 0)
        await pipeline.process(first)
        broker.kill()
        broker.wait(10)
        # the older scores are projected and owed while the broker is away
        # due at once: its records die with its producer (stopped below)
        down = Projector(pool, model, producer, topics.health, late_record_bound=0.0)
        await asyncio.wait_for(down.project_once(), 60)
        assert len(await _rows(url, "SELECT * FROM health_feed_owed")) == 6
        # its records die with it: delivered once the broker is back, they would be
        # followed (the organizations queued again) and nothing would be owed any more
        await asyncio.wait_for(producer.stop(), 30)
        bootstrap, broker = start_embedded_broker(port=port)
        await _recreate(bootstrap, topics.health)
        back = await _producer(bootstrap)
        try:
            newer: list[asyncio.Task[int]] = []

            async def meanwhile() -> None:
                # the organizations change and another process projects them at once
                await pipeline.process(second)
                other = Projector(pool, model, back, topics.health, shards=2)
                newer.append(asyncio.create_task(other.project_once()))
                await asyncio.sleep(1.0)

            owed = Projector(pool, model, _TakenOverBeforeItsFeed(back, meanwhile), topics.health)
            assert await owed.project_once() == 6
            assert newer and await newer[0] > 0
            rest = Projector(pool, model, back, topics.health)
            await rest.drain()
            last = await _feed(bootstrap, topics.health, 12)
            assert last == _newest_on_the_feed(await stored_states(admin), model)
        finally:
            await back.stop()
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(producer.stop(), 5)
        await admin.close()
        await pool.close()
        stop_process(broker)
