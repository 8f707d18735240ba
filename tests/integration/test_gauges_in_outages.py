"""What /metrics says while one of the service's two backends is away.

The gauges an alert rule reads must keep telling the truth about the backend that is
still there: a broker outage is exactly when alerts stop leaving the outbox, and
`HealthscoreOutboxStale` reads `healthscore_outbox_oldest_unsent_age_seconds`.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import asyncpg
import pytest

from healthscore.service.app import ServiceOptions
from healthscore_lab.devservices import start_embedded_broker, stop_process
from tests.integration.test_ops_endpoints import samples, value
from tests.utils.harness import make_topics, ops_get, running_service, service_settings


async def test_the_outbox_gauges_keep_counting_while_the_broker_is_down(
    migrated_database: str,
) -> None:
    # a broker of the test's own: it is killed for real
    bootstrap, broker = start_embedded_broker()
    try:
        topics = await make_topics(bootstrap, partitions=1)
        settings = service_settings(migrated_database, bootstrap, topics)
        options = ServiceOptions(run_sweep=False, create_topics=False, gauge_interval_seconds=0.5)
        async with running_service(settings, options) as service:
            port = service.ops_port
            assert port

            async def gauges() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
                status, text = await ops_get(port, "/metrics")
                assert status == 200
                return samples(text)

            deadline = time.monotonic() + 30
            while (
                value(
                    await gauges(),
                    "healthscore_background_last_success_timestamp_seconds",
                    task="gauge_refresh",
                )
                == 0
            ):
                assert time.monotonic() < deadline, "the gauges never refreshed"
                await asyncio.sleep(0.2)

            stop_process(broker)
            # an alert committed while the broker is away (the silence sweep's, or a
            # batch's just before it went): the relay cannot publish it
            conn = await asyncpg.connect(migrated_database)
            try:
                organization = uuid.uuid4()
                await conn.execute("INSERT INTO organizations (id) VALUES ($1)", organization)
                await conn.execute(
                    "INSERT INTO alert_outbox (alert_id, organization_id, kind, episode, payload)"
                    " VALUES ($1, $2, 'risk_raised', 1, '{}')",
                    uuid.uuid4(),
                    organization,
                )
            finally:
                await conn.close()

            deadline = time.monotonic() + 30
            while True:
                m = await gauges()
                if (
                    value(m, "healthscore_outbox_backlog_alerts") == 1
                    and value(m, "healthscore_outbox_oldest_unsent_age_seconds") > 1
                ):
                    break
                assert time.monotonic() < deadline, (
                    "the outbox gauges froze with the broker: backlog "
                    f"{value(m, 'healthscore_outbox_backlog_alerts')}, oldest "
                    f"{value(m, 'healthscore_outbox_oldest_unsent_age_seconds')}, gauge "
                    "refresh failures in a row "
                    f"{value(m, 'healthscore_background_failures_in_a_row', task='gauge_refresh')}"
                )
                await asyncio.sleep(0.5)
            # the refresh still fails, and says so: the lag it could not read is stale
            assert value(m, "healthscore_background_failures_in_a_row", task="gauge_refresh") >= 1
    finally:
        stop_process(broker)


pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


async def test_the_notification_queue_gauge_shows_a_listener_that_pins_it(
    migrated_database: str,
) -> None:
    """A session that LISTENs and idles in a transaction keeps PostgreSQL's notification
    queue from being truncated; full, every write that notifies (the read model's, in
    the consumers' batches) fails. Nothing watched it (review 32b, F3): the gauge
    `HealthscoreNotificationQueueFilling` reads rises while the listener holds it and
    falls once it is gone."""
    from healthscore.service.kafka_clients import KafkaConnection
    from healthscore.service.ops.gauges import GaugeRefresher
    from healthscore.service.ops.metrics import Metrics
    from healthscore.store.db import create_pool

    metrics = Metrics()
    pool = await create_pool(migrated_database, "healthscore_writer", min_size=1, max_size=2)
    listener = await asyncpg.connect(migrated_database)
    sender = await asyncpg.connect(migrated_database)
    try:
        refresher = GaugeRefresher(pool, metrics, KafkaConnection("localhost:1"), "g", ["t"])

        async def usage() -> float:
            await refresher.refresh_outbox()
            return float(metrics.notification_queue_usage._value.get())

        assert await usage() == 0.0
        await listener.add_listener("pinned", lambda *_: None)
        await listener.execute("BEGIN; SELECT 1")  # then idle in the transaction
        await sender.execute(
            "SELECT pg_notify('pinned', repeat('x', 7900) || i) FROM generate_series(1, 3000) i"
        )
        pinned = await usage()
        assert pinned > 0.002, pinned  # about 24 MB of the queue's 8 GB (distinct payloads:
        # a transaction's repeats of one notification are sent once)
        await listener.close()
        for _ in range(50):
            await sender.execute("SELECT pg_notify('pinned', 'x')")  # lets it truncate
            if await usage() < pinned:
                break
            await asyncio.sleep(0.1)
        assert await usage() < pinned
    finally:
        if not listener.is_closed():
            await listener.close()
        await sender.close()
        await pool.close()
