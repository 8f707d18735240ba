"""SIGKILL the service again and again while it consumes: nothing lost, nothing counted twice.

`healthscore serve` runs as a child process against a fresh database and fresh
4-partition topics. A simulated stream (duplicates and malformed messages
included) is produced at a steady rate while the test kills the process at
random moments and restarts it. Some kills hunt for the inside of a batch
transaction: the test polls `pg_stat_activity` for a service backend in an
open transaction that has locked `consumer_offsets` (only the batch pipeline
does), freezes the process with SIGSTOP, confirms the transaction is still
open (not committing) while nothing can move, and only then SIGKILLs it.
Every other kill is classified the same way, so the count of kills that cut
a batch transaction is exact, not a guess.

After the last restart the stored offsets must reach the end of every
partition (counted from the producer's acks); then the database and the
output topics are checked against an oracle computed from the produced
messages alone (tests/faults/oracle.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from healthscore.core.scoring.model import default_model
from healthscore.service.projector import project
from healthscore_lab.simulator import SimulatedMessage
from tests.faults.oracle import Oracle, episode_violations, simulated_stream
from tests.utils.alert_stream import all_problems, read_alerts
from tests.utils.fault_tools import log_events
from tests.utils.faults import (
    KillReport,
    Produced,
    end_offsets,
    evict_group_members,
    freeze_classify_kill,
    kill_inside_batch_transaction,
    kill_while_a_live_batch_awaits_its_feed,
    produce_recorded,
    read_topic,
    stored_offsets,
)
from tests.utils.harness import (
    ServiceProcess,
    Topics,
    make_producer,
    make_topics,
    service_settings,
)
from tests.utils.states import organizations_without_state, stored_states

pytestmark = pytest.mark.faults


@dataclass(frozen=True)
class CrashPlan:
    events: int
    kills: int
    organizations: int = 200
    seed: int = 20240611
    duplicate_rate: float = 0.02
    malformed_rate: float = 0.002
    batch_max_records: int = 500
    segment_seconds: float = 3.0  # each round's share of the stream is produced over this long
    hunt_timeout: float = 15.0
    rejoin_timeout: float = 60.0
    drain_timeout: float = 120.0
    # live batches project their own changes and publish their feed before they commit
    live_in_batch: bool = False
    # organizations whose CRM profile rides the stream (`SimulationConfig.profile_share`)
    profile_share: float = 0.2


SHORT = CrashPlan(events=6_000, kills=3)
LONG = CrashPlan(events=50_000, kills=6, drain_timeout=300.0)


async def test_sigkill_during_consumption_loses_and_doubles_nothing_short(
    migrated_database: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    await run_crash_recovery(migrated_database, kafka_bootstrap, tmp_path, SHORT)


async def test_sigkill_with_live_batches_projecting_their_own_changes(
    migrated_database: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """`READ_MODEL_LIVE_IN_BATCH`: a kill between a batch's feed publish and its commit."""
    plan = dataclasses.replace(SHORT, events=4_000, kills=2, seed=20261203, live_in_batch=True)
    await run_crash_recovery(migrated_database, kafka_bootstrap, tmp_path, plan)


@pytest.mark.slow
async def test_sigkill_during_consumption_loses_and_doubles_nothing_long(
    migrated_database: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    await run_crash_recovery(migrated_database, kafka_bootstrap, tmp_path, LONG)


async def run_crash_recovery(
    database_url: str, bootstrap: str, tmp_path: Path, plan: CrashPlan
) -> None:
    started = time.monotonic()
    rng = random.Random(plan.seed)
    topics = await make_topics(bootstrap, partitions=4)
    group = f"crash-{uuid.uuid4().hex[:8]}"
    settings = service_settings(
        database_url, bootstrap, topics, group=group, batch_max_records=plan.batch_max_records
    )
    messages, oracle = simulated_stream(plan, timedelta(days=30))

    # The stream is released in segments, one per life of the service: once the
    # (re)started service holds its partitions, the next segment is produced at a
    # steady rate and the kill lands at a random moment within it. The service
    # therefore always has work when it dies, and the rest of the segment piles
    # up as a backlog that the next life consumes in full-size batches.
    segments = plan.kills + 1
    rate = -(-len(messages) // segments) / plan.segment_seconds
    gates = [asyncio.Event() for _ in range(segments)]
    produced: list[Produced] = []
    producer = await make_producer(bootstrap)
    production = asyncio.create_task(
        _produce_in_segments(producer, messages, topics, rate, gates, produced)
    )
    service = ServiceProcess(
        settings, {"READ_MODEL_LIVE_IN_BATCH": "true"} if plan.live_in_batch else None
    )
    log_path = str(tmp_path / "service.log")
    monitor = await asyncpg.connect(database_url)
    reports: list[KillReport] = []
    rejoins: list[float] = []
    try:
        for number in range(plan.kills):
            rejoins.append(await _start_and_wait_assigned(service, log_path, plan.rejoin_timeout))
            gates[number].set()
            await asyncio.sleep(rng.uniform(0.1, 0.8 * plan.segment_seconds))
            pid = _pid(service, log_path)
            report: KillReport | None = None
            if plan.live_in_batch:  # every kill hunts for a live batch's feed in flight
                report = await kill_while_a_live_batch_awaits_its_feed(
                    pid, monitor, plan.hunt_timeout
                )
            elif number % 2 == 0:  # every other kill hunts for an open batch transaction
                report = await kill_inside_batch_transaction(pid, monitor, plan.hunt_timeout)
            if report is None:  # a kill at a random moment, classified all the same
                report = await freeze_classify_kill(pid, monitor)
            reports.append(report)
            assert service.process is not None
            service.process.wait(10)
            await evict_group_members(bootstrap, group)
        rejoins.append(await _start_and_wait_assigned(service, log_path, plan.rejoin_timeout))
        gates[-1].set()
        await asyncio.wait_for(production, timeout=plan.drain_timeout)
        ends = end_offsets(produced)
        assert sum(ends.values()) == len(messages)
        await _wait_for_offsets(monitor, group, ends, service, plan.drain_timeout, log_path)
        await _wait_for_relay(monitor, plan.drain_timeout, log_path)
        batches = _count_log_events(log_path, "batch_committed")
        await check_database(monitor, oracle)
        projected = await check_read_model(monitor, bootstrap, topics, plan.drain_timeout)
        alerts = await check_alert_topic(monitor, bootstrap, topics)
        dead, _ = await check_poison_dead_lettered(bootstrap, topics, produced)
    finally:
        if not production.done():
            production.cancel()
            with contextlib.suppress(BaseException):
                await production
        service.kill()
        await producer.stop()
        await monitor.close()

    in_transaction = sum(r.in_transaction for r in reports)
    summary = {
        "events": plan.events,
        "messages": len(messages),
        "distinct_events": len(oracle.event_ids),
        "duplicates": oracle.duplicates,
        "malformed": oracle.malformed,
        "profiles": sum(
            1 for m in messages if m.topic_kind == "profile" and m.valid and not m.is_duplicate
        ),
        "profile_repeats": sum(1 for m in messages if m.topic_kind == "profile" and m.is_duplicate),
        "bad_profiles": sum(1 for m in messages if m.topic_kind == "profile" and not m.valid),
        "dead_letters": dead,
        "alerts": alerts,
        "kills": len(reports),
        "kills_in_batch_transaction": in_transaction,
        "kills_with_feed_in_flight": sum(r.feed_in_flight for r in reports),
        "projected_organizations": projected,
        "projected_in_batch": _sum_log_field(log_path, "batch_committed", "projected_in_batch"),
        "batches_committed": batches,
        "rejoin_seconds": [round(r, 1) for r in rejoins],
        "seconds": round(time.monotonic() - started, 1),
    }
    print("crash recovery:", json.dumps(summary))
    assert len(reports) == plan.kills
    assert in_transaction >= 1, f"no kill landed inside a batch transaction: {reports}"
    if plan.live_in_batch:
        assert summary["projected_in_batch"], "no live batch projected its own changes"
        assert any(r.feed_in_flight for r in reports), (
            f"no kill landed between a live batch's projection and its commit: {reports}"
        )


async def _produce_in_segments(
    producer: AIOKafkaProducer,
    messages: list[SimulatedMessage],
    topics: Topics,
    rate: float,
    gates: list[asyncio.Event],
    produced: list[Produced],
) -> None:
    size = -(-len(messages) // len(gates))
    for index, gate in enumerate(gates):
        await gate.wait()
        segment = messages[index * size : (index + 1) * size]
        await produce_recorded(producer, segment, topics, rate=rate, log=produced)


def _pid(service: ServiceProcess, log_path: str) -> int:
    assert service.process is not None
    assert service.alive, f"the service exited:\n{_log_tail(log_path)}"
    return service.process.pid


def _log_tail(path: str, lines: int = 30) -> str:
    with open(path, "rb") as f:
        return b"".join(f.readlines()[-lines:]).decode(errors="replace")


def _sum_log_field(path: str, event: str, name: str) -> int:
    return sum(int(entry.get(name) or 0) for entry in log_events(path, event))


def _count_log_events(path: str, event: str) -> int:
    needle = f'"event": "{event}"'.encode()
    with open(path, "rb") as f:
        return sum(needle in line for line in f)


async def _start_and_wait_assigned(service: ServiceProcess, log_path: str, timeout: float) -> float:
    """Start the service; return once it holds its partitions (seconds it took)."""
    before = _count_log_events(log_path, "partitions_assigned") if service.log_path else 0
    started = time.monotonic()
    service.start(log_path)
    while _count_log_events(log_path, "partitions_assigned") <= before:
        _pid(service, log_path)
        if time.monotonic() - started > timeout:
            raise AssertionError(f"no partitions assigned in {timeout}s:\n{_log_tail(log_path)}")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def _wait_for_offsets(
    conn: asyncpg.Connection[Any],
    group: str,
    ends: dict[tuple[str, int], int],
    service: ServiceProcess,
    timeout: float,
    log_path: str,
) -> None:
    deadline = time.monotonic() + timeout
    stored: dict[tuple[str, int], int] = {}
    while time.monotonic() < deadline:
        if not service.alive:
            raise AssertionError(f"the service exited:\n{_log_tail(log_path)}")
        stored = await stored_offsets(conn, group)
        if all(stored.get(tp, 0) >= end for tp, end in ends.items()):
            assert all(stored[tp] == end for tp, end in ends.items()), (stored, ends)
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"offsets {stored} never reached {ends}:\n{_log_tail(log_path)}")


async def _wait_for_relay(conn: asyncpg.Connection[Any], timeout: float, log_path: str) -> None:
    await wait_published(conn, timeout, lambda: f"\n{_log_tail(log_path)}")


async def wait_published(
    conn: asyncpg.Connection[Any],
    timeout: float,
    detail: Callable[[], str] = str,
    check: Callable[[], None] = lambda: None,
) -> None:
    """Until the outbox has no unpublished alert (`check` between looks: raises to stop);
    past `timeout` fail, with `detail()` appended."""
    deadline = time.monotonic() + timeout
    pending = None
    while time.monotonic() < deadline:
        check()
        pending = await conn.fetchval(
            "SELECT count(*) FROM alert_outbox WHERE published_at IS NULL"
        )
        if pending == 0:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{pending} alerts never published{detail()}")


async def check_database(conn: asyncpg.Connection[Any], oracle: Oracle) -> None:
    # every distinct valid event applied exactly once, nothing else
    stored_ids = {
        str(r["event_id"]) for r in await conn.fetch("SELECT event_id FROM processed_events")
    }
    assert len(stored_ids) == len(oracle.event_ids)
    missing = oracle.event_ids - stored_ids
    extra = stored_ids - oracle.event_ids
    assert not missing and not extra, (len(missing), len(extra))

    states = await stored_states(conn)
    assert set(states) == set(oracle.organizations)
    assert await organizations_without_state(conn) == set(), "state rows never saved"
    milestones: dict[str, set[str]] = {org: set() for org in oracle.organizations}
    for row in await conn.fetch("SELECT organization_id, milestone_type FROM success_milestones"):
        milestones.setdefault(str(row["organization_id"]), set()).add(row["milestone_type"])
    interactions: dict[str, dict[str, int]] = {org: {} for org in oracle.organizations}
    for row in await conn.fetch(
        "SELECT id, organization_id, event_count FROM support_interactions"
    ):
        interactions.setdefault(str(row["organization_id"]), {})[str(row["id"])] = row[
            "event_count"
        ]

    wrong: list[str] = []
    for org, expected in oracle.organizations.items():
        state = states[org]
        if state.event_count != expected.event_count:
            wrong.append(f"{org}: event_count {state.event_count} != {expected.event_count}")
        if state.totals != expected.totals:
            wrong.append(f"{org}: totals {state.totals} != {expected.totals}")
        # a milestone a profile announced before usage crossed it is no new milestone;
        # which came first depends on how the topics interleaved, so: crossed ones only,
        # every crossed one unless a profile knew it, and the state knows them all
        crossed, known = expected.milestones, expected.profile_milestones
        if not milestones[org] <= crossed or not crossed - milestones[org] <= known:
            wrong.append(f"{org}: milestones {milestones[org]} against {crossed}, {known}")
        in_state = set(state.milestones)
        if in_state != crossed | known:
            wrong.append(f"{org}: state milestones {in_state} != {crossed | known}")
        if state.created_at != expected.created_at:
            wrong.append(f"{org}: created_at {state.created_at} != {expected.created_at}")
        if interactions[org] != dict(expected.interactions):
            wrong.append(f"{org}: interactions {interactions[org]} != {expected.interactions}")
    assert not wrong, "\n".join(wrong[:20])

    rows = await conn.fetch(
        "SELECT organization_id, episode, kind, payload->>'risk_level' AS level, seq, "
        "alert_id, payload->>'alert_id' AS payload_id, payload->>'kind' AS payload_kind "
        "FROM alert_outbox"
    )
    for r in rows:
        assert r["payload_id"] == str(r["alert_id"]) and r["payload_kind"] == r["kind"], dict(r)
    problems = episode_violations(
        (str(r["organization_id"]), r["episode"], r["kind"], r["level"], r["seq"]) for r in rows
    )
    assert not problems, "\n".join(problems[:20])


async def check_read_model(
    conn: asyncpg.Connection[Any], bootstrap: str, topics: Topics, timeout: float
) -> int:
    """Once the projector has caught up, and published the feed it owed (a pass that
    waited for a paused broker longer than its feed wait commits the read model and owes
    the feed, which passes publish once the feed's pause after a failure is over): every
    organization's `customer_health` row is the projection of its stored state, and the
    health feed's last record of it says the same (a batch or pass killed after
    publishing is published again, never lost)."""
    deadline = time.monotonic() + timeout
    while await conn.fetchval(
        "SELECT (SELECT count(*) FROM read_model_pending) + (SELECT count(*) FROM health_feed_owed)"
    ):
        assert time.monotonic() < deadline, "the read model or its feed never caught up"
        await asyncio.sleep(0.2)
    model = default_model()
    expected = {}
    for org, state in (await stored_states(conn)).items():
        health = project(state, model)
        if health is not None:
            expected[org] = (health.score, health.churn_probability)
    shown = {
        str(r["organization_id"]): (float(r["health_score"]), float(r["churn_probability"]))
        for r in await conn.fetch(
            "SELECT organization_id, health_score, churn_probability FROM customer_health"
        )
    }
    assert shown == expected, [
        (o, shown.get(o), e) for o, e in expected.items() if shown.get(o) != e
    ][:10]
    feed: dict[str, tuple[float, float]] = {}
    for record in await read_topic(bootstrap, topics.health, expect=len(expected), settle=2.0):
        body = orjson.loads(record.value)
        feed[body["organization_id"]] = (body["health_score"], body["churn_probability"])
    assert feed == expected, [(o, feed.get(o), e) for o, e in expected.items() if feed.get(o) != e][
        :10
    ]
    return len(expected)


async def check_alert_topic(conn: asyncpg.Connection[Any], bootstrap: str, topics: Topics) -> int:
    """Every outbox alert is on the topic (duplicates allowed), nothing else is."""
    outbox = {
        str(r["alert_id"]): str(r["organization_id"])
        for r in await conn.fetch("SELECT alert_id, organization_id FROM alert_outbox")
    }
    # no alert: the exactly-once and episode checks would hold vacuously
    assert outbox, "the stream raised no alert: choose one that does"
    records = await read_topic(bootstrap, topics.alerts, expect=len(outbox), settle=2.0)
    on_topic: dict[str, str] = {}
    for record in records:
        body = orjson.loads(record.value)
        on_topic[body["alert_id"]] = body["organization_id"]
        assert record.key == body["organization_id"].encode()
    assert set(on_topic) - set(outbox) == set(), "alerts on the topic that the outbox never had"
    assert set(outbox) - set(on_topic) == set(), "outbox alerts missing from the topic"
    assert on_topic == outbox
    # and as the notification team reads them: each record valid against the exported
    # contract, reasons and actions a CS manager can act on, the episode promise kept
    assert all_problems(read_alerts(records)) == []
    return len(outbox)


async def check_poison_dead_lettered(
    bootstrap: str, topics: Topics, produced: list[Produced]
) -> tuple[int, int]:
    """Each poison record is in its topic's dead-letter queue, by its source coordinates,
    with the reason the corpus gives it, and unaltered; nothing valid is there. Copies
    are allowed (a batch redone after its dead letters went out sends them again), a
    different reason for the same record is not. Returns (poison records, copies)."""
    poison: dict[tuple[str, int, int], SimulatedMessage] = {
        (p.topic, p.partition, p.offset): p.message for p in produced if not p.message.valid
    }
    reasons: dict[tuple[str, int, int], set[str]] = {}
    copies = 0
    for source, dlq in (
        (topics.usage, topics.dlq_usage),
        (topics.support, topics.dlq_support),
        (topics.profile, topics.dlq_profile),
    ):
        expect = sum(1 for t, _, _ in poison if t == source)
        for record in await read_topic(bootstrap, dlq, expect=expect, settle=1.0):
            headers = {k: (v or b"").decode() for k, v in record.headers}
            where = (
                headers["x-source-topic"],
                int(headers["x-source-partition"]),
                int(headers["x-source-offset"]),
            )
            assert where[0] == source and where in poison, f"a valid record dead-lettered: {where}"
            assert record.value == poison[where].value, f"dead letter {where} altered"
            reasons.setdefault(where, set()).add(headers["x-error-reason"])
            copies += 1
    missing = set(poison) - set(reasons)
    assert not missing, f"{len(missing)} poison records never dead-lettered: {sorted(missing)[:5]}"
    wrong = {
        where: (seen, poison[where].expected_reason)
        for where, seen in reasons.items()
        if seen != {poison[where].expected_reason}
    }
    assert not wrong, f"dead letters with another reason than the corpus's: {wrong}"
    return len(poison), copies
