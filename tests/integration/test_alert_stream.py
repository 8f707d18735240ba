"""The alert topic as the notification team reads it: real bytes through the real broker
and the real service, every published alert read back and checked against the exported
contract (JSON Schema, AsyncAPI key, headers and content type) and the episode promise
(`tests/utils/alert_stream.py`), over sequences that could break episodes."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson

from healthscore.core.scoring.model import V2_MODEL_PATH
from healthscore.service.app import ServiceOptions
from healthscore.service.outbox import OutboxRelay
from healthscore.store.db import create_pool
from tests.faults.test_relay_crash import at_risk_stream
from tests.utils.alert_stream import Alert, all_problems, read_alerts
from tests.utils.faults import run_relay_then_die
from tests.utils.harness import (
    Topics,
    consume_all,
    make_producer,
    make_topics,
    produce_json,
    running_service,
    service_settings,
    wait_for,
)
from tests.utils.scenarios import wait_processed

USER = str(uuid.uuid5(uuid.NAMESPACE_DNS, "alert-stream-user"))


def _id(*parts: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, ":".join(("alert-stream", *parts))))


class Script:
    """One organization's events, in the order they are sent."""

    def __init__(self, name: str) -> None:
        self.org = _id(name)
        self.usage: list[dict[str, Any]] = []
        self.support: list[dict[str, Any]] = []

    def use(self, kind: str, at: datetime, n: int = 0) -> Script:
        self.usage.append(
            {
                "event_id": _id(self.org, kind, at.isoformat(), str(n)),
                "organization_id": self.org,
                "user_id": USER,
                "type": kind,
                "occurred_at": at.isoformat(),
            }
        )
        return self

    def ask(self, interaction: str, action: str, at: datetime, **fields: Any) -> Script:
        self.support.append(
            {
                "event_id": _id(self.org, interaction, action, at.isoformat()),
                "organization_id": self.org,
                "interaction_id": _id(self.org, interaction),
                "action": action,
                "occurred_at": at.isoformat(),
                **fields,
            }
        )
        return self


def _daily_use(script: Script, start: datetime, days: int) -> None:
    for day in range(days):
        script.use("login", start + timedelta(days=day))


def _scripts(base: datetime) -> Iterator[Script]:
    # an escalation opened, closed and opened again within minutes, twice over
    flapping = Script("flapping")
    _daily_use(flapping, base, 6)
    t = base + timedelta(days=6)
    for n in range(3):
        at = t + timedelta(minutes=10 * n)
        flapping.ask(
            f"esc{n}",
            "opened",
            at,
            interaction_type="escalation",
            channel="phone",
            priority="urgent",
            sentiment="very_negative",
        )
        flapping.ask(f"esc{n}", "closed", at + timedelta(minutes=4), outcome="resolved")
    yield flapping
    # a cancellation request, then its retraction (closed, retained)
    retracted = Script("retracted")
    _daily_use(retracted, base, 6)
    t = base + timedelta(days=6)
    retracted.ask(
        "cancel",
        "opened",
        t,
        interaction_type="cancellation_request",
        channel="email",
        priority="high",
        sentiment="negative",
    )
    retracted.ask(
        "cancel", "closed", t + timedelta(hours=2), outcome="retained", sentiment="positive"
    )
    yield retracted
    # support events out of order: the close and an update before the opening
    unordered = Script("unordered")
    _daily_use(unordered, base, 6)
    t = base + timedelta(days=6)
    unordered.ask(
        "complaint", "updated", t + timedelta(hours=1), outcome="escalated", priority="urgent"
    )
    unordered.ask("complaint", "resolved", t + timedelta(hours=3), outcome="resolved")
    unordered.ask(
        "complaint",
        "opened",
        t,
        interaction_type="complaint",
        channel="chat",
        priority="high",
        sentiment="very_negative",
    )
    unordered.ask(
        "cancel",
        "opened",
        t + timedelta(hours=2),
        interaction_type="cancellation_request",
        channel="phone",
        priority="urgent",
        sentiment="very_negative",
    )
    yield unordered
    # three urgent escalations left open: the path closes them, by id (the penalty's cap
    # makes the second close worth more than the first)
    stuck = Script("stuck")
    stuck.use("login", base)
    t = base + timedelta(days=4)
    for n in range(3):
        stuck.ask(
            f"esc{n}",
            "opened",
            t + timedelta(hours=n),
            interaction_type="escalation",
            channel="phone",
            priority="urgent",
            sentiment="very_negative",
        )
    # later events of one interaction (one partition, in order) rescore it past v2's
    # persistence
    stuck.ask("esc0", "updated", t + timedelta(days=2, hours=12), sentiment="negative")
    stuck.ask("esc0", "updated", t + timedelta(days=3), sentiment="negative")
    yield stuck


async def _run(
    database: str, bootstrap: str, scripts: list[Script], topics: Topics, expect: int
) -> list[Alert]:
    settings = service_settings(database, bootstrap, topics, model_path=V2_MODEL_PATH)
    usage = [e for s in scripts for e in s.usage]
    support = [e for s in scripts for e in s.support]
    producer = await make_producer(bootstrap)
    try:
        async with running_service(settings, ServiceOptions(run_sweep=False, create_topics=False)):
            await produce_json(producer, topics.usage, usage)
            await produce_json(producer, topics.support, support)
            await wait_processed(database, len(usage) + len(support), 60.0, exactly=True)
            published = await wait_for(
                database,
                "SELECT count(*) FROM alert_outbox WHERE published_at IS NOT NULL "
                "HAVING count(*) = (SELECT count(*) FROM alert_outbox)",
                lambda n: n is not None and n >= expect,
                60.0,
            )
    finally:
        await producer.stop()
    records = await consume_all(bootstrap, topics.alerts, expect=published, settle=1.0)
    return read_alerts(records)


async def test_every_published_alert_keeps_the_contract_and_its_episode(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    topics = await make_topics(kafka_bootstrap, partitions=3)
    base = (datetime.now(UTC) - timedelta(days=10)).replace(microsecond=0)
    scripts = list(_scripts(base))
    cancelling = Script("cancelling")
    cancelling.usage, cancelling.support = at_risk_stream(cancelling.org, base)
    scripts.append(cancelling)
    alerts = await _run(migrated_database, kafka_bootstrap, scripts, topics, expect=1)
    assert alerts, "the scripted organizations raise alerts"
    assert {a.body["organization_id"] for a in alerts} >= {cancelling.org}
    assert all_problems(alerts) == []
    # what a reader adds up of an alert's reasons is its score's distance from 100 exactly
    for alert in alerts:
        hundredths = sum(round(f["impact"] * 100) for f in alert.body["risk_factors"])
        assert hundredths == round((alert.body["health_score"] - 100) * 100), alert.body
    stuck = next(s for s in scripts if s.org == _id("stuck"))
    closes = [
        action
        for a in alerts
        if a.body["organization_id"] == stuck.org
        for action in a.body["path_to_healthy"]
        if action["action"].startswith("close ")
    ]
    assert closes, "the stuck organization's alert closes its escalations"
    assert {c["interaction_id"] for c in closes} <= {_id(stuck.org, f"esc{n}") for n in range(3)}


async def test_a_comeback_and_a_late_profile_keep_their_episodes(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    # silent for weeks after a month of daily use (the batch rescores the silence before
    # the next event: a raise dated in the silence), back in daily use (a recovery), then
    # a CRM profile after the alerts saying the account is older and far along
    topics = await make_topics(kafka_bootstrap, partitions=3)
    base = (datetime.now(UTC) - timedelta(days=60)).replace(microsecond=0)
    comeback = Script("comeback")
    for day in range(25):
        for n, kind in enumerate(("login", "client_added", "form_submitted", "email_sent")):
            comeback.use(kind, base + timedelta(days=day, hours=n))
    for day in range(50, 59):
        for n, kind in enumerate(("login", "client_added", "form_submitted", "email_sent")):
            comeback.use(kind, base + timedelta(days=day, hours=n))
    profile = {
        "event_id": _id(comeback.org, "profile"),
        "organization_id": comeback.org,
        "created_at": (base - timedelta(days=700)).isoformat(),
        "milestones": {"onboarding_completed": (base - timedelta(days=690)).isoformat()},
        "occurred_at": (base + timedelta(days=59, hours=6)).isoformat(),
    }
    settings = service_settings(
        migrated_database, kafka_bootstrap, topics, model_path=V2_MODEL_PATH
    )
    producer = await make_producer(kafka_bootstrap)
    try:
        async with running_service(settings, ServiceOptions(run_sweep=False, create_topics=False)):
            await produce_json(producer, topics.usage, comeback.usage)
            await wait_processed(migrated_database, len(comeback.usage), 60.0, exactly=True)
            await produce_json(producer, topics.profile, [profile])
            await wait_processed(migrated_database, len(comeback.usage) + 1, 60.0, exactly=True)
            published = await wait_for(
                migrated_database,
                "SELECT count(*) FROM alert_outbox WHERE published_at IS NOT NULL "
                "HAVING count(*) = (SELECT count(*) FROM alert_outbox)",
                lambda n: n is not None,
                60.0,
            )
    finally:
        await producer.stop()
    alerts = read_alerts(
        await consume_all(kafka_bootstrap, topics.alerts, expect=published, settle=1.0)
    )
    assert [a.body["kind"] for a in alerts][:2] == ["risk_raised", "recovered"]
    assert all_problems(alerts) == []


async def _outbox_payloads(database: str) -> dict[str, dict[str, Any]]:
    conn = await asyncpg.connect(database)
    try:
        rows = await conn.fetch("SELECT alert_id, payload::text AS payload FROM alert_outbox")
    finally:
        await conn.close()
    return {str(r["alert_id"]): orjson.loads(r["payload"]) for r in rows}


async def test_a_relay_killed_before_marking_and_a_replayed_input_keep_the_new_fields(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    # The alerts with actions by interaction (interaction_id, shared points) and without
    # any (no_path_reason): decided with no relay running, published by a relay killed
    # after the broker's acks and before it marks them, re-sent by the next relay, then
    # the whole input delivered again. A consumer reading the topic must see each alert
    # whole and valid every time, under its one id, and nothing new from the replay.
    topics = await make_topics(kafka_bootstrap, partitions=3)
    base = (datetime.now(UTC) - timedelta(days=10)).replace(microsecond=0)
    stuck = next(s for s in _scripts(base) if s.org == _id("stuck"))
    cancelling = Script("cancelling")
    cancelling.usage, cancelling.support = at_risk_stream(cancelling.org, base)
    usage, support = stuck.usage + cancelling.usage, stuck.support + cancelling.support
    settings = service_settings(
        migrated_database, kafka_bootstrap, topics, model_path=V2_MODEL_PATH
    )
    producer = await make_producer(kafka_bootstrap)
    try:
        no_relay = ServiceOptions(run_relay=False, run_sweep=False, create_topics=False)
        async with running_service(settings, no_relay):
            await produce_json(producer, topics.usage, usage)
            await produce_json(producer, topics.support, support)
            await wait_processed(migrated_database, len(usage) + len(support), 60.0, exactly=True)
    finally:
        await producer.stop()
    stored = await _outbox_payloads(migrated_database)
    assert {p["organization_id"] for p in stored.values()} == {stuck.org, cancelling.org}
    assert any(a.get("interaction_id") for p in stored.values() for a in p["path_to_healthy"])
    assert any(p["no_path_reason"] == "held_by_ceiling" for p in stored.values())

    returncode, output = await asyncio.to_thread(
        run_relay_then_die, migrated_database, kafka_bootstrap, topics.alerts
    )
    assert returncode == -signal.SIGKILL, output
    pool = await create_pool(migrated_database, "healthscore_writer")
    producer = await make_producer(kafka_bootstrap)
    try:
        assert await OutboxRelay(pool, producer, topics.alerts).relay_alerts() == len(stored)
        # the input again, whole (a producer's replay): duplicates, nothing new decided
        async with running_service(settings, ServiceOptions(run_sweep=False, create_topics=False)):
            await produce_json(producer, topics.usage, usage)
            await produce_json(producer, topics.support, support)
            # read and committed past (each input record is in the log twice now)
            await wait_for(
                migrated_database,
                "SELECT coalesce(sum(next_offset), 0) FROM consumer_offsets",
                lambda n: n == 2 * (len(usage) + len(support)),
                60.0,
            )
    finally:
        await producer.stop()
        await pool.close()
    assert await _outbox_payloads(migrated_database) == stored

    alerts = read_alerts(
        await consume_all(kafka_bootstrap, topics.alerts, expect=2 * len(stored), settle=2.0)
    )
    assert len(alerts) == 2 * len(stored), "each alert twice: the killed relay's and the resend"
    assert all_problems(alerts) == []
    for alert in alerts:  # each record is the stored alert: only its emission time is new
        body = {k: v for k, v in alert.body.items() if k != "emitted_at"}
        assert body == {
            k: v for k, v in stored[alert.body["alert_id"]].items() if k != "emitted_at"
        }
