"""The relay dies between publish and mark: the same alert ids go out again, nothing else.

Alerts are written into alert_outbox by the real pipeline (the service runs
in-process with its relay switched off, on a scripted stream that puts a few
organizations at risk). Then the relay runs in a child process whose
`after_publish` hook SIGKILLs it: the broker has acked every alert of the
page, the rows are not yet marked. A second, normal relay run must re-publish
exactly those alert ids (deterministic: the same ids, never new ones), mark
them sent, and a third run must publish nothing.
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import pytest

from healthscore.contracts.enums import AlertKind, RiskLevel
from healthscore.core.scoring.alerts import alert_id_for
from healthscore.core.scoring.model import V2_MODEL_PATH
from healthscore.service.app import ServiceOptions
from healthscore.service.outbox import OutboxRelay
from healthscore.store.db import create_pool
from tests.utils.faults import read_topic, run_relay_then_die
from tests.utils.harness import (
    make_producer,
    make_topics,
    produce_json,
    running_service,
    service_settings,
)
from tests.utils.scenarios import wait_processed

pytestmark = pytest.mark.faults

AT_RISK = [str(uuid.uuid5(uuid.NAMESPACE_DNS, f"relay-crash-{n}.example")) for n in range(3)]
USER = str(uuid.uuid5(uuid.NAMESPACE_DNS, "relay-crash-user"))


def _id(*parts: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, ":".join(("relay-crash", *parts))))


def at_risk_stream(org: str, base: datetime) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A quiet organization that exports its data, downgrades, complains and asks to cancel."""

    def usage(kind: str, at: datetime) -> dict[str, Any]:
        return {
            "event_id": _id(org, kind),
            "organization_id": org,
            "user_id": USER,
            "type": kind,
            "occurred_at": at.isoformat(),
        }

    def support(interaction: str, action: str, at: datetime, **extra: Any) -> dict[str, Any]:
        return {
            "event_id": _id(org, interaction, action),
            "organization_id": org,
            "interaction_id": _id(org, interaction),
            "action": action,
            "occurred_at": at.isoformat(),
            **extra,
        }

    t = base + timedelta(days=4)
    return (
        [
            usage("login", base),
            usage("data_export_requested", base + timedelta(days=3)),
            usage("subscription_downgraded", base + timedelta(days=3, hours=1)),
        ],
        [
            support(
                "complaint",
                "opened",
                t,
                interaction_type="complaint",
                channel="email",
                priority="high",
                sentiment="very_negative",
            ),
            support(
                "cancellation",
                "opened",
                t + timedelta(hours=3),
                interaction_type="cancellation_request",
                channel="phone",
                priority="urgent",
                sentiment="very_negative",
            ),
            support("cancellation", "updated", t + timedelta(hours=4), outcome="escalated"),
        ],
    )


async def test_relay_killed_after_publish_before_mark_resends_the_same_ids(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    topics = await make_topics(kafka_bootstrap, partitions=2)
    # v2 raises on this short scripted stream; v3 (96 h persistence) would not
    settings = service_settings(
        migrated_database, kafka_bootstrap, topics, model_path=V2_MODEL_PATH
    )
    base = (datetime.now(UTC) - timedelta(days=10)).replace(microsecond=0)
    usage: list[dict[str, Any]] = []
    support: list[dict[str, Any]] = []
    for org in AT_RISK:
        u, s = at_risk_stream(org, base)
        usage += u
        support += s

    # 1. the real pipeline writes the alerts; no relay runs, so they stay pending
    producer = await make_producer(kafka_bootstrap)
    try:
        options = ServiceOptions(run_relay=False, run_sweep=False, create_topics=False)
        async with running_service(settings, options):
            await produce_json(producer, topics.usage, usage)
            await produce_json(producer, topics.support, support)
            await wait_processed(migrated_database, len(usage) + len(support), 60.0, exactly=True)
    finally:
        await producer.stop()
    outbox = await _outbox(migrated_database)
    assert {r["organization_id"] for r in outbox.values()} == set(AT_RISK)
    assert all(r["published_at"] is None for r in outbox.values())
    # the ids the contract promises, by construction: each episode's by the event-time day
    # of its raise (the raise's scored_at), which every alert of it names (episode_id)
    raised_on = {
        (row["organization_id"], row["episode"]): int(
            datetime.fromisoformat(orjson.loads(row["payload"])["scored_at"]).timestamp() // 86400
        )
        for row in outbox.values()
        if row["kind"] == AlertKind.RISK_RAISED
    }
    for alert_id, row in outbox.items():
        level = RiskLevel(row["level"]) if row["kind"] == AlertKind.RISK_ESCALATED else None
        day = raised_on[(row["organization_id"], row["episode"])]
        expected = alert_id_for(
            row["organization_id"], row["episode"], AlertKind(row["kind"]), level, raised_day=day
        )
        assert alert_id == str(expected)
        episode_id = alert_id_for(
            row["organization_id"], row["episode"], AlertKind.RISK_RAISED, raised_day=day
        )
        assert orjson.loads(row["payload"])["episode_id"] == str(episode_id)

    # 2. the relay publishes, the broker acks, the process dies before marking
    returncode, output = await asyncio.to_thread(
        run_relay_then_die, migrated_database, kafka_bootstrap, topics.alerts
    )
    assert returncode == -signal.SIGKILL, output
    after_crash = await _outbox(migrated_database)
    assert set(after_crash) == set(outbox)
    assert all(r["published_at"] is None for r in after_crash.values()), "marked, yet it died"
    assert all(r["publish_attempts"] == 0 for r in after_crash.values())
    first = await read_topic(kafka_bootstrap, topics.alerts, expect=len(outbox), settle=1.5)
    first_ids = Counter(orjson.loads(r.value)["alert_id"] for r in first)
    assert first_ids == Counter(list(outbox)), (
        "the broker must hold each pending alert exactly once"
    )

    # 3. a normal relay run re-publishes the same ids and marks them
    pool = await create_pool(migrated_database, "healthscore_writer")
    producer = await make_producer(kafka_bootstrap)
    try:
        relay = OutboxRelay(pool, producer, topics.alerts)
        assert await relay.relay_alerts() == len(outbox)
        assert await relay.relay_alerts() == 0  # 4. and nothing more
    finally:
        await producer.stop()
        await pool.close()
    marked = await _outbox(migrated_database)
    assert all(r["published_at"] is not None for r in marked.values())
    assert all(r["publish_attempts"] == 1 for r in marked.values())

    records = await read_topic(kafka_bootstrap, topics.alerts, expect=2 * len(outbox), settle=2.0)
    assert len(records) == 2 * len(outbox), "published more (or less) than the resend"
    bodies = [orjson.loads(r.value) for r in records]
    assert Counter(b["alert_id"] for b in bodies) == Counter(list(outbox) * 2)
    for record, body in zip(records, bodies, strict=True):
        row = outbox[body["alert_id"]]
        assert record.key == row["organization_id"].encode()
        # the resend is the stored alert itself: only the emission time may differ
        stored = orjson.loads(row["payload"])
        assert {k: v for k, v in body.items() if k != "emitted_at"} == {
            k: v for k, v in stored.items() if k != "emitted_at"
        }


async def _outbox(database_url: str) -> dict[str, dict[str, Any]]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT alert_id, organization_id, episode, kind, payload->>'risk_level' AS level, "
            "payload::text AS payload, published_at, publish_attempts FROM alert_outbox"
        )
    finally:
        await conn.close()
    return {
        str(r["alert_id"]): {**dict(r), "organization_id": str(r["organization_id"])} for r in rows
    }
