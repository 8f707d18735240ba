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
