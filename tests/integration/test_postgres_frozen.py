"""A PostgreSQL that stops answering, as a frozen host or a path that drops packets
does: connections stay open and no byte comes back (review 36b, H1).

Readiness cut each check off after 2 s by cancelling it and waiting for the
cancellation, and a cancelled query gives its connection back to the pool only once
the server answers the cancel request: the round never finished, /readyz said only
that the checker was stuck with `postgres: ok` from the round before, and
`healthscore_readiness_check_failed{check="postgres"}` stayed 0, so the alert made for
it never fired. Real bytes to the real server through a TCP path that goes silent.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

from healthscore.service.app import ServiceOptions
from tests.integration.test_ops_endpoints import ready_within, samples
from tests.integration.test_stop_in_postgres_outage import SilentPath
from tests.utils.api import api_client, api_config, api_login
from tests.utils.harness import make_topics, ops_get, running_service, service_settings


async def test_a_postgresql_that_stops_answering_is_named_by_readiness(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    path = SilentPath(migrated_database)
    await path.start()
    topics = await make_topics(kafka_bootstrap, partitions=1)
    settings = service_settings(path.url(), kafka_bootstrap, topics, readiness_interval_seconds=0.5)
    options = ServiceOptions(run_sweep=False, create_topics=False)
    try:
        async with running_service(settings, options) as service:
            port = service.ops_port
            status, _ = await ready_within(port, lambda s, _: s == 200, 60)
            assert status == 200
            path.go_silent()
            try:
                status, body = await ready_within(
                    port, lambda s, b: s == 503 and "postgres" in json.loads(b)["failed"]
                )
                checks = json.loads(body)["checks"]
                assert checks["postgres"].startswith("no answer"), checks
                _, text = await ops_get(port, "/metrics")
                failed = samples(text)[
                    ("healthscore_readiness_check_failed", (("check", "postgres"),))
                ]
                assert failed == 1.0
                # later rounds still name it, with how long it has gone unanswered
                status, body = await ready_within(
                    port, lambda s, b: "no answer for" in json.loads(b)["checks"]["postgres"]
                )
                assert json.loads(body)["checks"]["postgres"].endswith("(limit 2s)"), body
            finally:
                path.speak_again()
            status, body = await ready_within(port, lambda s, _: s == 200, 60)
            assert status == 200, body
    finally:
        await path.cut()


async def test_healthscore_lag_names_a_postgresql_that_does_not_answer(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    # the runbooks' first tool took 61 s and printed "TimeoutError: " (review 36b, L1)
    path = SilentPath(migrated_database)
    await path.start()
    path.go_silent()
    env = dict(os.environ)
    env.update({"DATABASE_URL": path.url(), "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap})
    try:
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "healthscore.cli", "lag"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        await path.cut()
    assert done.returncode == 2, done.stdout
    assert "PostgreSQL (DATABASE_URL) did not answer within 15s" in done.stderr, done.stderr


async def test_the_api_readiness_answers_while_postgresql_does_not(
    migrated_database: str, pg_admin_url: str
) -> None:
    """/api/readyz cut its query off after 2 s the way readiness once did (review 36b):
    the cancelled query gave its connection back only once the server answered, so the
    probe hung with the server, each probe holding one more connection. It answers that
    PostgreSQL does not, and probes arriving meanwhile share the one query in flight."""
    async with api_login(pg_admin_url, migrated_database) as login_url:
        path = SilentPath(login_url)
        await path.start()
        try:
            config = await api_config(migrated_database, path.url(), pool_size=2)
            async with api_client(config) as (client, _app):
                assert (await client.get("/api/readyz")).status_code == 200
                path.go_silent()
                try:
                    # the bound fails the test instead of hanging it: far above 2 s
                    async with asyncio.timeout(30):
                        first, second = await asyncio.gather(
                            client.get("/api/readyz"), client.get("/api/readyz")
                        )
                        later = [await client.get("/api/readyz") for _ in range(4)]
                    for answer in (first, second, *later):
                        assert answer.status_code == 503, answer.text
                        (failed,) = answer.json()["failed"]
                        assert failed["check"] == "postgres", failed
                        assert failed["problem"].startswith("no answer"), failed
                    assert "no answer for" in later[-1].json()["failed"][0]["problem"]
                finally:
                    path.speak_again()
                for _ in range(150):  # the server answers again: ready from then on
                    if (await client.get("/api/readyz")).status_code == 200:
                        break
                    await asyncio.sleep(0.2)
                else:
                    raise AssertionError("/api/readyz not ready once PostgreSQL answered")
        finally:
            await path.cut()
