"""The ops endpoints of a real running service: metrics, health, readiness, AsyncAPI."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from healthscore.service.app import ServiceOptions
from healthscore.service.ops.asyncapi import HIDDEN_HOST
from healthscore.store.migrate import load_migrations, migrations_path
from healthscore_lab.devservices import Services
from tests.utils.harness import (
    fetchval,
    make_producer,
    make_topics,
    ops_get,
    produce_json,
    running_service,
    service_settings,
)
from tests.utils.html import Tags, external_references
from tests.utils.scenarios import wait_processed


async def ready_within(
    port: int, done: Callable[[int, str], bool], seconds: float = 30.0
) -> tuple[int, str]:
    """Poll /readyz until `done(status, body)`: the answer changes with the next
    background round, not with the request."""
    deadline = time.monotonic() + seconds
    while True:
        status, body = await ops_get(port, "/readyz")
        if done(status, body) or time.monotonic() > deadline:
            return status, body
        await asyncio.sleep(0.2)


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    result = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            result[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return result


def exported(metrics: Samples, name: str, **labels: str) -> float | None:
    """The sample's value, None when /metrics does not show it."""
    return metrics.get((name, tuple(sorted(labels.items()))))


def value(metrics: Samples, name: str, **labels: str) -> float:
    """The sample's value; one /metrics does not show fails (absent is not 0)."""
    found = exported(metrics, name, **labels)
    if found is None:
        shown = [dict(key) for sample, key in metrics if sample == name]
        raise AssertionError(f"{name} {labels} is not in /metrics (its samples: {shown})")
    return found


def usage(org: str, kind: str, at: datetime) -> dict[str, object]:
    return {
        "event_id": str(uuid.uuid4()),
        "organization_id": org,
        "type": kind,
        "occurred_at": at.isoformat(),
    }


async def test_metrics_health_readiness_and_docs_of_a_running_service(
    migrated_database: str, kafka_bootstrap: str, services: Services
) -> None:
    topics = await make_topics(kafka_bootstrap, partitions=2)
    settings = service_settings(
        migrated_database, kafka_bootstrap, topics, readiness_interval_seconds=0.5
    )
    org = str(uuid.uuid4())
    now = datetime.now(UTC) - timedelta(minutes=1)
    options = ServiceOptions(
        run_sweep=True,
        create_topics=False,
        gauge_interval_seconds=0.5,
        distribution_interval_seconds=0.5,
    )
    producer = await make_producer(kafka_bootstrap)
    try:
        async with running_service(settings, options) as service:
            port = service.ops_port
            assert port
            assert await ops_get(port, "/healthz") == (200, '{"status":"ok"}')

            events = [usage(org, "login", now), usage(org, "client_added", now)]
            events.append(dict(events[0]))  # a duplicate
            await produce_json(producer, topics.usage, events)
            # a broken producer's record, with a broken clock too (1970)
            await producer.send_and_wait(
                topics.usage, b"{not json", key=org.encode(), timestamp_ms=1000
            )
            await wait_processed(migrated_database, 2, exactly=True)

            async def settled() -> Samples:
                seen: dict[str, float | None] = {}
                for _ in range(100):
                    status, text = await ops_get(port, "/metrics")
                    assert status == 200
                    m = samples(text)
                    # a sample not shown yet is not settled (None, not 0)
                    seen = {
                        "dead_lettered": exported(
                            m,
                            "healthscore_events_dead_lettered_total",
                            topic=topics.usage,
                            reason="invalid_json",
                        ),
                        **{
                            f"lag_{p}": exported(
                                m,
                                "healthscore_consumer_lag_records",
                                topic=topics.usage,
                                partition=p,
                            )
                            for p in ("0", "1")
                        },
                        **{
                            band: exported(m, "healthscore_organizations", health_status=band)
                            for band in ("excellent", "good")
                        },
                        "sweep_steps": exported(
                            m, "healthscore_background_steps_total", task="sweep", outcome="ok"
                        ),
                    }
                    if (
                        None not in seen.values()
                        and seen["dead_lettered"] == 1
                        and seen["lag_0"] == seen["lag_1"] == 0
                        and (seen["excellent"] or 0) + (seen["good"] or 0) >= 1
                        and (seen["sweep_steps"] or 0) >= 1
                    ):
                        return m
                    await asyncio.sleep(0.2)
                raise AssertionError(f"metrics did not settle: {seen}")

            m = await settled()
            assert value(m, "healthscore_events_consumed_total", topic=topics.usage) == 4
            assert value(m, "healthscore_events_applied_total", topic=topics.usage) == 2
            assert value(m, "healthscore_events_deduplicated_total", topic=topics.usage) == 1
            assert value(m, "healthscore_batch_size_records_count") >= 1
            assert value(m, "healthscore_batch_duration_seconds_count") >= 1
            # the records that passed the contract, the duplicate among them; not the
            # dead-lettered one, whose 1970 timestamp added 57 years to the sum
            assert value(m, "healthscore_produce_to_commit_seconds_count") == 3
            assert value(m, "healthscore_produce_to_commit_seconds_sum") < 3600
            assert value(m, "healthscore_milestones_achieved_total") == 1  # first_client_added
            assert value(m, "healthscore_rebalances_total", change="assigned") >= 1
            # which release runs: the newest migration it ships
            newest = load_migrations(migrations_path())[-1].version
            build = [dict(key) for sample, key in m if sample == "healthscore_build_info"]
            assert [labels["schema"] for labels in build] == [newest], build
            # the service recorded the model it serves, with its aggregate settings
            assert (
                await fetchval(migrated_database, "SELECT version FROM score_models")
                == service.model.version
            )
            # the one replica consumes both partitions of each input topic
            for topic in (topics.usage, topics.support, topics.profile):
                assert value(m, "healthscore_partitions_assigned", topic=topic) == 2
            # the gauges refreshed (the lag above settled): counted, none failed
            assert (
                value(m, "healthscore_background_steps_total", task="gauge_refresh", outcome="ok")
                >= 1
            )
            for task in ("gauge_refresh", "relay", "projection", "sweep"):
                assert (
                    "healthscore_background_steps_total",
                    (("outcome", "failed"), ("task", task)),
                ) in m
                assert (
                    value(m, "healthscore_background_steps_total", task=task, outcome="failed") == 0
                )
                assert value(m, "healthscore_background_failures_in_a_row", task=task) == 0
                # a step running now began a moment ago, or none runs (0)
                began = value(m, "healthscore_background_step_started_timestamp_seconds", task=task)
                assert began == 0 or began > time.time() - 600
            assert (
                value(
                    m, "healthscore_background_last_success_timestamp_seconds", task="gauge_refresh"
                )
                > 0
            )
            assert value(m, "healthscore_outbox_backlog_alerts") == 0
            assert ("healthscore_outbox_oldest_unsent_age_seconds", ()) in m
            assert value(m, "healthscore_organizations_by_risk", risk_level="low") == 1
            # the sweep ran (settled above: a step that did not fail) and rescored
            # nobody: the organization's events are a minute old, silence counts after
            # SILENCE_RESCORE_AFTER_SECONDS (6 h)
            assert value(m, "healthscore_sweep_runs_total") == 0

            # the checker runs every 0.5 s here; the first rounds may precede assignment
            status, body = await ready_within(port, lambda s, _: s == 200)
            document = json.loads(body)
            assert document["checks"] == {
                "postgres": "ok",
                "kafka": "ok",
                "partitions": "ok",
                "read_model": "ok",
                "corrupt_records": "ok",
                "batches": "ok",
            }
            assert document["failed"] == [] and document["checked_at"]
            assert document["age_seconds"] < service.readiness.stale_after

            # readiness really checks: a hung broker makes it fail, and say so
            broker = services.broker_process
            if broker is not None:
                os.kill(broker.pid, signal.SIGSTOP)
                try:
                    status, body = await ready_within(port, lambda s, _: s == 503)
                finally:
                    os.kill(broker.pid, signal.SIGCONT)
                assert json.loads(body)["failed"] == ["kafka"], body
                await ready_within(port, lambda s, _: s == 200)

            status, html = await ops_get(port, "/docs/asyncapi")
            assert status == 200 and "asyncapi" in html.lower()
            assert external_references(html) == []
            assert not {tag for tag, _ in Tags(html).tags} & {"script", "link"}
            status, doc = await ops_get(port, "/docs/asyncapi.json")
            assert status == 200
            assert "UsageEvent" in json.loads(doc)["components"]["schemas"]
            # the broker address is internal: not shown unless ASYNCAPI_SHOW_SERVERS=true
            assert kafka_bootstrap not in html and kafka_bootstrap not in doc
            assert {s["host"] for s in json.loads(doc)["servers"].values()} == {HIDDEN_HOST}
            # a mistyped path: a 404 that names the endpoints (not FastStream's "does
            # not support regular HTTP", which reads as a port that is not HTTP)
            status, body = await ops_get(port, "/readz")
            assert status == 404
            assert json.loads(body) == {
                "error": "not found",
                "endpoints": [
                    "/docs/asyncapi",
                    "/docs/asyncapi.json",
                    "/docs/asyncapi/",
                    "/healthz",
                    "/metrics",
                    "/readyz",
                ],
            }

            _, text = await ops_get(port, "/metrics")
    finally:
        await producer.stop()

    promtool = shutil.which("promtool")
    if promtool:
        result = await asyncio.to_thread(
            subprocess.run,
            [promtool, "check", "metrics"],
            input=text.encode(),
            capture_output=True,
            check=False,
        )
        assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


async def test_the_asyncapi_servers_are_shown_when_configured(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    topics = await make_topics(kafka_bootstrap, partitions=1)
    settings = service_settings(
        migrated_database, kafka_bootstrap, topics, asyncapi_show_servers=True
    )
    async with running_service(settings) as service:
        port = service.ops_port
        assert port
        status, html = await ops_get(port, "/docs/asyncapi")
        assert status == 200 and kafka_bootstrap in html
        assert external_references(html) == []
        status, doc = await ops_get(port, "/docs/asyncapi.json")
        assert {s["host"] for s in json.loads(doc)["servers"].values()} == {kafka_bootstrap}


pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


async def test_a_replica_whose_batches_keep_failing_is_not_ready(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    """A release that fails every batch (here: PostgreSQL refuses every new event id)
    answered ready as long as PostgreSQL and the broker answered, and a rollout carried
    it to every replica. Once batches have failed for a while without one committing,
    `batches` fails; the first that commits makes it ready again."""
    topics = await make_topics(kafka_bootstrap, partitions=1)
    settings = service_settings(
        migrated_database, kafka_bootstrap, topics, readiness_interval_seconds=0.5
    )
    org = str(uuid.uuid4())
    conn = await asyncpg.connect(migrated_database)
    producer = await make_producer(kafka_bootstrap)
    try:
        await conn.execute(
            """CREATE FUNCTION refuse_event_ids() RETURNS trigger LANGUAGE plpgsql AS $$
               BEGIN RAISE EXCEPTION 'injected: every batch fails'; END $$;
               CREATE TRIGGER refuse_event_ids BEFORE INSERT ON processed_events
               FOR EACH STATEMENT EXECUTE FUNCTION refuse_event_ids()"""
        )
        options = ServiceOptions(run_sweep=False, create_topics=False)
        async with running_service(settings, options) as service:
            port = service.ops_port
            assert port
            status, body = await ready_within(port, lambda status, _: status == 200)
            assert status == 200, body
            now = datetime.now(UTC) - timedelta(minutes=1)
            await produce_json(producer, topics.usage, [usage(org, "login", now)])
            status, body = await ready_within(
                port, lambda status, body: status == 503 and "batches" in body
            )
            assert status == 503, body
            checks = json.loads(body)["checks"]
            assert "none committed" in checks["batches"], checks
            assert "injected: every batch fails" in checks["batches"], checks
            assert checks["postgres"] == checks["kafka"] == "ok", checks
            # the fault mended: the batch commits at its next retry, and readiness follows
            await conn.execute("DROP TRIGGER refuse_event_ids ON processed_events")
            await wait_processed(migrated_database, 1, exactly=True)
            status, body = await ready_within(port, lambda status, _: status == 200)
            assert status == 200, body
    finally:
        await producer.stop()
        await conn.close()
