"""A producer backfills one organization's history far behind the watermark.

The other organizations on the partition have reached the present; one organization's
weeks of healthy history then arrive at a steady pace, through the real broker, while
`serve` runs its silence sweep every half second. Between two of that organization's
batches its newest event lay weeks below the watermark: the sweep took it for silent,
rescored it in silence up to the watermark and raised, escalated and then recovered
alerts that a replay of the same log does not make (review 36a). With
SILENCE_SETTLE_SECONDS the sweep leaves it alone while its events keep arriving, and
rescores its silence once they stop.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from healthscore.service.app import ServiceOptions
from tests.utils.harness import fetchval, make_producer, make_topics, service_settings
from tests.utils.harness import running_service as running

DAYS = 60
SETTLE_SECONDS = 8.0


def _history(org: str, end: datetime) -> list[dict[str, Any]]:
    """A healthy organization's days up to `end`: logins, features, business events."""
    rnd = random.Random(org)
    users = [str(uuid.UUID(int=rnd.getrandbits(128), version=4)) for _ in range(4)]
    events: list[dict[str, Any]] = []

    def add(at: datetime, kind: str, **more: Any) -> None:
        events.append(
            {
                "event_id": str(uuid.UUID(int=rnd.getrandbits(128), version=4)),
                "organization_id": org,
                "user_id": rnd.choice(users),
                "type": kind,
                "occurred_at": at.isoformat(),
                **more,
            }
        )

    start = end - timedelta(days=DAYS)
    for kind in ("onboarding_completed", "profile_completed", "integration_connected"):
        add(start, kind)
    for day in range(DAYS):
        at = start + timedelta(days=day)
        for hour in (9, 11, 14, 16):
            add(at + timedelta(hours=hour), "login")
        for n, feature in enumerate(("reports", "calendar", "invoices", "contracts")):
            add(at + timedelta(hours=10, minutes=n), "feature_used", feature=feature)
        for n, kind in enumerate(("client_added", "email_sent", "payment_received")):
            add(at + timedelta(hours=12, minutes=n), kind)
    events.sort(key=lambda e: e["occurred_at"])
    return events


async def test_an_organization_backfilled_behind_the_watermark_gets_no_silence_alerts(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    topics = await make_topics(kafka_bootstrap, partitions=1)
    now = datetime.now(UTC)
    others = [str(uuid.uuid4()) for _ in range(3)]
    backfilled = str(uuid.uuid4())
    settings = service_settings(
        migrated_database,
        kafka_bootstrap,
        topics,
        sweep_interval_seconds=0.5,
        silence_settle_seconds=SETTLE_SECONDS,
    )
    producer = await make_producer(kafka_bootstrap)
    try:
        async with running(settings, ServiceOptions(run_sweep=True, create_topics=False)):
            # the partition reaches the present: the watermark is an hour ago
            for org in others:
                for event in _history(org, now - timedelta(hours=1))[-20:]:
                    await producer.send(topics.usage, orjson.dumps(event), key=org.encode())
            await producer.flush()
            # weeks of one organization's history, ending a day before the watermark,
            # at about 40 events a second: many sweeps run while it arrives
            for n, event in enumerate(_history(backfilled, now - timedelta(days=1))):
                await producer.send(topics.usage, orjson.dumps(event), key=backfilled.encode())
                if n % 8 == 7:
                    await producer.flush()
                    await asyncio.sleep(0.2)
            await producer.flush()
            backfilled_id = uuid.UUID(backfilled)
            expected = len(_history(backfilled, now - timedelta(days=1)))
            applied = 0
            for _ in range(600):
                applied = await fetchval(
                    migrated_database,
                    "SELECT count(*) FROM processed_events WHERE organization_id = $1",
                    backfilled_id,
                )
                if applied == expected:
                    break
                await asyncio.sleep(0.1)
            assert applied == expected
            # once its events stop, the sweep rescores the day of silence it ends with:
            # the read model's score then stands after its newest event
            swept = False
            for _ in range(int(SETTLE_SECONDS * 10) + 300):
                swept = bool(
                    await fetchval(
                        migrated_database,
                        "SELECT c.scored_at > s.last_event_at FROM customer_health c "
                        "JOIN organization_state s USING (organization_id) "
                        "WHERE organization_id = $1",
                        backfilled_id,
                    )
                )
                if swept:
                    break
                await asyncio.sleep(0.1)
            assert swept, "the sweep never rescored the organization after its backfill"
            alerts = await fetchval(
                migrated_database,
                "SELECT count(*) FROM alert_outbox WHERE organization_id = $1",
                backfilled_id,
            )
    finally:
        await producer.stop()
    assert alerts == 0, f"{alerts} alert(s) for a healthy organization being backfilled"
