"""`organization.profile.v1` through the real broker and the real service: profiles
count in the state and the read model, a repeated one counts once, bad ones go to
the profile topic's DLQ with their reason while the valid records beside them are
applied, and `healthscore replay` rebuilds them from the log (an imported CSV, written
straight into the database, is not in the log)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from aiokafka import AIOKafkaProducer

from healthscore.core.enums import MilestoneType
from healthscore.core.scoring.state import OrganizationState
from healthscore.service.replay import replay
from healthscore_lab.poison import MISROUTED_USAGE, profile_poison_corpus
from tests.conftest import DatabaseFactory
from tests.utils.harness import (
    Topics,
    consume_all,
    fetchval,
    make_producer,
    make_topics,
    running_service,
    service_settings,
)
from tests.utils.scenarios import high_watermarks, wait_caught_up
from tests.utils.states import stored_states

REPO = Path(__file__).resolve().parents[2]


def org(name: str) -> uuid.UUID:
    return uuid.uuid5(uuid.NAMESPACE_URL, f"profile-topic-{name}")


KNOWN, UNSEEN, VICTIM = org("known"), org("unseen"), org("victim")
NOW = datetime.now(UTC).replace(microsecond=0)
START = NOW - timedelta(days=40)
LONG_AGO = NOW - timedelta(days=600)
EVERY_MILESTONE = {m.value: (LONG_AGO + timedelta(days=30)).isoformat() for m in MilestoneType}


def _login(organization: uuid.UUID, day: int) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid5(organization, f"login-{day}")),
        "organization_id": str(organization),
        "user_id": str(uuid.uuid5(organization, "user")),
        "type": "login",
        "occurred_at": (START + timedelta(days=day)).isoformat(),
    }


def _profile(organization: uuid.UUID, name: str, milestones: dict[str, str]) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid5(organization, f"profile-{name}")),
        "organization_id": str(organization),
        "created_at": LONG_AGO.isoformat(),
        "milestones": milestones,
        "occurred_at": (START + timedelta(days=25)).isoformat(),
    }


async def _send(producer: AIOKafkaProducer, topic: str, key: bytes | None, value: bytes) -> None:
    await (
        await producer.send(topic, value=value, key=key, timestamp_ms=int(NOW.timestamp() * 1000))
    )


async def _missing_milestones(database_url: str, organization: uuid.UUID) -> float:
    text = await fetchval(
        database_url,
        "SELECT risk_factors::text FROM customer_health WHERE organization_id = $1",
        organization,
    )
    factors = orjson.loads(text)
    return float(sum(f["impact"] for f in factors if f["factor"] == "missing_milestones"))


async def _states(database_url: str) -> dict[uuid.UUID, OrganizationState]:
    conn = await asyncpg.connect(database_url)
    try:
        return {uuid.UUID(org): state for org, state in (await stored_states(conn)).items()}
    finally:
        await conn.close()


async def _caught_up(database_url: str, bootstrap: str, group: str, topics: Topics) -> None:
    await wait_caught_up(
        database_url, bootstrap, group, [topics.usage, topics.support, topics.profile]
    )


async def test_profiles_through_the_broker_count_once_bad_ones_dead_letter_and_replay_keeps_them(
    database_factory: DatabaseFactory, migrated_template: str, kafka_bootstrap: str
) -> None:
    topics = await make_topics(kafka_bootstrap, partitions=2)
    live_db = await database_factory(template=migrated_template)
    settings = service_settings(live_db, kafka_bootstrap, topics)
    producer = await make_producer(kafka_bootstrap)
    poison = profile_poison_corpus(str(VICTIM), NOW)
    try:
        async with running_service(settings):
            for day in range(20):
                await _send(
                    producer, topics.usage, str(KNOWN).encode(), orjson.dumps(_login(KNOWN, day))
                )
            await _caught_up(live_db, kafka_bootstrap, settings.consumer_group, topics)
            assert await _missing_milestones(live_db, KNOWN) < 0

            # the profiles, one twice, and every bad profile, among valid usage events
            good = orjson.dumps(_profile(KNOWN, "crm", EVERY_MILESTONE))
            await _send(producer, topics.profile, str(KNOWN).encode(), good)
            unseen = _profile(
                UNSEEN, "crm", {"onboarding_completed": EVERY_MILESTONE["onboarding_completed"]}
            )
            await _send(producer, topics.profile, str(UNSEEN).encode(), orjson.dumps(unseen))
            for n, case in enumerate(poison):
                await _send(producer, topics.profile, case.key, case.value)
                await _send(
                    producer, topics.usage, str(VICTIM).encode(), orjson.dumps(_login(VICTIM, n))
                )
            await _send(producer, topics.profile, str(KNOWN).encode(), good)  # a repeat
            # the usage event first sent to the profile topic, now to its own: applied
            # (taken there as an empty profile, it had claimed the id, and this copy was
            # dead-lettered as an event_id_conflict)
            (misrouted,) = (case for case in poison if case.name == MISROUTED_USAGE)
            await _send(producer, topics.usage, misrouted.key, misrouted.value)
            await _caught_up(live_db, kafka_bootstrap, settings.consumer_group, topics)
            dead = await consume_all(kafka_bootstrap, topics.dlq_profile, expect=len(poison))
    finally:
        await producer.stop()

    assert await _missing_milestones(live_db, KNOWN) == 0  # every milestone, from the CRM
    live = await _states(live_db)
    assert live[KNOWN].created_at == LONG_AGO.timestamp()
    assert set(live[KNOWN].milestones) == set(EVERY_MILESTONE)
    assert live[KNOWN].event_count == 20  # a profile is not activity
    assert live[UNSEEN].created_at == LONG_AGO.timestamp() and live[UNSEEN].event_count == 0
    assert await fetchval(live_db, "SELECT count(*) FROM organizations WHERE id = $1", UNSEEN) == 1
    # not acknowledged as milestones reached now: nothing to reward from before the stream
    assert (
        await fetchval(
            live_db, "SELECT count(*) FROM success_milestones WHERE organization_id = $1", KNOWN
        )
        == 0
    )
    # the repeat counted once; the valid usage between the bad profiles all applied
    assert (
        await fetchval(
            live_db,
            "SELECT count(*) FROM processed_events WHERE event_id = $1",
            uuid.uuid5(KNOWN, "profile-crm"),
        )
        == 1
    )
    assert live[VICTIM].event_count == len(poison) + 1 and live[VICTIM].created_at is None
    assert sum((await high_watermarks(kafka_bootstrap, [topics.dlq_usage])).values()) == 0

    reasons = {r.value: dict(r.headers).get("x-error-reason", b"").decode() for r in dead}
    assert reasons == {case.value: case.expected_reason for case in poison}
    for record in dead:
        headers = dict(record.headers)
        assert headers["x-source-topic"] == topics.profile.encode()

    # a replay from the log rebuilds the profiles with everything else
    replay_db = await database_factory(template=migrated_template)
    await replay(service_settings(replay_db, kafka_bootstrap, topics), timeout=120.0, sweep=False)
    rebuilt = await _states(replay_db)
    for organization in (KNOWN, UNSEEN, VICTIM):
        a, b = live[organization], rebuilt[organization]
        assert (a.created_at, a.milestones, a.event_count) == (
            b.created_at,
            b.milestones,
            b.event_count,
        )
        # the whole state: scores, their days, the alert episode, the ids it cites
        assert a == b
    assert await _missing_milestones(replay_db, KNOWN) == 0


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "healthscore.cli", *args],
        env={
            **{k: v for k, v in os.environ.items() if k != "DATABASE_URL"},
            "PYTHONPATH": f"{REPO / 'services'}:{REPO / 'services' / 'lab'}",
            **env,
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_import_publish_sends_the_checked_profiles_through_the_log_and_again_no_conflict(
    migrated_database: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    topics = await make_topics(kafka_bootstrap, partitions=2)
    settings = service_settings(migrated_database, kafka_bootstrap, topics)
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "KAFKA_IDEMPOTENT_PRODUCER": "false",  # the embedded broker refuses it
        "PROFILE_TOPIC": topics.profile,
    }
    milestones = ";".join(f"{name}={at}" for name, at in EVERY_MILESTONE.items())
    good = tmp_path / "profiles.csv"
    good.write_text(
        "organization_id,created_at,milestones\n"
        f"{KNOWN},{LONG_AGO.isoformat()},{milestones}\n"
        f"{UNSEEN},,onboarding_completed={LONG_AGO.isoformat()}\n"
    )
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "organization_id,created_at,milestones\n"
        f"{KNOWN},{LONG_AGO.isoformat()},\n"
        f"{UNSEEN},{(NOW + timedelta(days=3)).isoformat()},\n"
    )
    refused = _cli("import", "--profiles", str(bad), "--publish", **env)
    assert refused.returncode == 1
    assert f"{bad}: row 3, column created_at:" in refused.stderr
    assert "after the import's time" in refused.stderr
    # checked first: nothing of the bad file reached the topic
    assert sum((await high_watermarks(kafka_bootstrap, [topics.profile])).values()) == 0

    async with running_service(settings):
        for _ in range(2):  # the same file twice: new events that change nothing
            sent = _cli("import", "--profiles", str(good), "--publish", **env)
            assert sent.returncode == 0, sent.stderr
            assert f"2 organizations in {good}, 2 published to {topics.profile}" in sent.stdout
        await _caught_up(migrated_database, kafka_bootstrap, settings.consumer_group, topics)
    # a second publish is no event_id_conflict (its records say another occurred_at)
    assert sum((await high_watermarks(kafka_bootstrap, [topics.dlq_profile])).values()) == 0
    states = await _states(migrated_database)
    assert states[KNOWN].created_at == LONG_AGO.timestamp()
    assert set(states[KNOWN].milestones) == set(EVERY_MILESTONE)
    assert states[UNSEEN].created_at is None
    assert states[UNSEEN].milestones == {"onboarding_completed": LONG_AGO.timestamp()}
    assert sum((await high_watermarks(kafka_bootstrap, [topics.profile])).values()) == 4
    assert await fetchval(migrated_database, "SELECT count(*) FROM processed_events") == 4


async def test_import_refuses_a_time_whose_utc_value_is_outside_the_contract(
    migrated_database: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """`0001-01-01T00:00:00+14:00` parses, but is in year 0 in UTC: the stream's contract
    refuses it (`out_of_range`), the import took it, and `--publish` then failed with a
    traceback turning it back into a timestamp (without `--publish`, the state kept a
    creation 2,025 years before the epoch). It is a row error now, like any bad time."""
    topics = await make_topics(kafka_bootstrap, partitions=1)
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "KAFKA_IDEMPOTENT_PRODUCER": "false",
        "PROFILE_TOPIC": topics.profile,
        "DATABASE_URL": migrated_database,
    }
    year_zero = "0001-01-01T00:00:00+14:00"
    profiles = tmp_path / "profiles.csv"
    profiles.write_text(
        "organization_id,created_at,milestones\n"
        f"{KNOWN},{year_zero},\n"
        f"{UNSEEN},,onboarding_completed={year_zero}\n"
    )
    labels = tmp_path / "labels.csv"
    labels.write_text(f"organization_id,churned_at\n{KNOWN},{year_zero}\n")
    for args in (("--profiles", str(profiles), "--publish"), ("--labels", str(labels))):
        refused = _cli("import", *args, **env)
        assert refused.returncode == 1, refused.stderr
        assert "Traceback" not in refused.stderr
        assert "outside 0001-01-01..9999-12-31" in refused.stderr
    assert (
        f"{profiles}: row 2, column created_at:"
        in _cli("import", "--profiles", str(profiles), **env).stderr
    )
    assert sum((await high_watermarks(kafka_bootstrap, [topics.profile])).values()) == 0
    assert await fetchval(migrated_database, "SELECT count(*) FROM organization_state") == 0
    assert await fetchval(migrated_database, "SELECT count(*) FROM churn_labels") == 0
