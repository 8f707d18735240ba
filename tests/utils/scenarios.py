"""Scenario helpers for the integration tests: streams, progress, snapshots.

Builds on `tests.utils.harness` (which stays as it is): simulated streams
produced with their event-time record timestamps, waiting until the service
has stored offsets at the true end of the topics, and a comparable snapshot
of everything the service derives in PostgreSQL.
"""

from __future__ import annotations

import asyncio
import inspect
import time
import uuid
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

import asyncpg
import msgspec
import orjson
from aiokafka import AIOKafkaProducer

from healthscore.core.scoring.state import unpack_state
from healthscore.service.app import Components
from healthscore.service.ingest.pipeline import BatchOutcome
from healthscore.service.kafka_clients import KafkaConnection
from healthscore.service.ops.lag import HighWatermarkProbe
from healthscore_lab.simulator import SimulatedMessage, SimulationConfig, generate, produce
from tests.utils.fault_tools import wait_processed as wait_processed  # its first home
from tests.utils.harness import Topics

TP = tuple[str, int]


# --------------------------------------------------------------------------- streams


def simulated_stream(
    organizations: int = 60,
    events: int = 3000,
    seed: int = 20240611,
    support_share: float = 0.08,
    duplicate_rate: float = 0.0,
    malformed_rate: float = 0.0,
    days: int = 20,
) -> list[SimulatedMessage]:
    """A deterministic simulated stream ending an hour before the latest Monday 00:00 UTC.

    The same seed gives the same stream relative to weekdays, hours and UTC days
    whenever it runs (the simulator's activity follows the clock and the week, and
    the score history and alert rules follow UTC days): a stream ending an hour
    before now moved all three with the wall clock, so what it alerted on changed
    from one hour to the next.
    """
    span = timedelta(days=days)
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    end = midnight - timedelta(days=midnight.weekday(), hours=1)
    config = SimulationConfig(
        start=end - span,
        organizations=organizations,
        events=events,
        seed=seed,
        span=span,
        duplicate_rate=duplicate_rate,
        malformed_rate=malformed_rate,
        support_share=support_share,
    )
    return list(generate(config))


async def produce_stream(
    bootstrap: str, topics: Topics, messages: Iterable[SimulatedMessage]
) -> int:
    """Produce with record timestamps = event times; wait for every ack."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=False,
        max_request_size=1024 * 1024,
    )
    await producer.start()
    try:
        stats = await produce(messages, producer, topics.usage, topics.support)
    finally:
        await producer.stop()
    return stats.sent


def expected_event_counts(messages: Iterable[SimulatedMessage]) -> dict[str, int]:
    """Per organization, how many distinct valid events the stream holds."""
    seen: set[str] = set()
    counts: dict[str, int] = {}
    for m in messages:
        if not m.valid or m.event_id is None or m.event_id in seen:
            continue
        seen.add(m.event_id)
        assert m.organization_id is not None
        counts[m.organization_id] = counts.get(m.organization_id, 0) + 1
    return counts


# --------------------------------------------------------------------------- progress


async def high_watermarks(bootstrap: str, topic_names: list[str]) -> dict[TP, int]:
    """True end offsets (from Fetch responses; see healthscore.service.ops.lag)."""
    async with HighWatermarkProbe(KafkaConnection(bootstrap)) as probe:
        return await probe.high_watermarks(await probe.partitions(topic_names))


async def stored_offsets(database_url: str, group: str) -> dict[TP, int]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT topic, partition, next_offset FROM consumer_offsets WHERE consumer_group = $1",
            group,
        )
    finally:
        await conn.close()
    return {(r["topic"], r["partition"]): int(r["next_offset"]) for r in rows}


async def read_model_caught_up(database_url: str) -> bool:
    conn = await asyncpg.connect(database_url)
    try:
        return bool(await conn.fetchval("SELECT NOT EXISTS (SELECT 1 FROM read_model_pending)"))
    finally:
        await conn.close()


async def wait_caught_up(
    database_url: str,
    bootstrap: str,
    group: str,
    topic_names: list[str],
    timeout: float = 90.0,
    read_model: bool = True,
) -> dict[TP, int]:
    """Wait until the group's stored offsets reach every partition's high watermark.

    With `read_model`, also until the projector has caught up with the state
    (customer_health and the health feed reflect every applied event).
    """
    targets = await high_watermarks(bootstrap, topic_names)
    deadline = time.monotonic() + timeout
    stored: dict[TP, int] = {}
    while time.monotonic() < deadline:
        stored = await stored_offsets(database_url, group)
        applied = all(stored.get(tp, 0) >= end for tp, end in targets.items() if end > 0)
        if applied and (not read_model or await read_model_caught_up(database_url)):
            return targets
        await asyncio.sleep(0.2)
    raise AssertionError(f"not caught up after {timeout}s: targets {targets}, stored {stored}")


# --------------------------------------------------------------------------- snapshots


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def _row(record: asyncpg.Record, exclude: Iterable[str] = ()) -> dict[str, Any]:
    skip = set(exclude)
    return {k: _plain(v) for k, v in record.items() if k not in skip}


@dataclass
class Snapshot:
    """Everything the service derived, in comparable form (keyed by natural ids)."""

    processed_events: set[str] = field(default_factory=set)
    states: dict[str, dict[str, Any]] = field(default_factory=dict)
    milestones: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    interactions: dict[str, dict[str, Any]] = field(default_factory=dict)
    health: dict[str, dict[str, Any]] = field(default_factory=dict)
    alerts: dict[str, dict[str, Any]] = field(default_factory=dict)
    history_by_cause: dict[str, int] = field(default_factory=dict)
    # (organization, day) -> the day's row: one per organization per event-time day
    history: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    offsets: dict[TP, int] = field(default_factory=dict)


# Columns written with the wall clock (or generated ids), never comparable across runs.
WALL_CLOCK_COLUMNS = ("id", "created_at", "updated_at")


async def snapshot(database_url: str) -> Snapshot:
    conn = await asyncpg.connect(database_url)
    try:
        snap = Snapshot()
        snap.processed_events = {
            str(r["event_id"]) for r in await conn.fetch("SELECT event_id FROM processed_events")
        }
        for r in await conn.fetch(
            "SELECT organization_id, state_msgpack, last_event_at, rescore_due_at "
            "FROM organization_state"
        ):
            raw = r["state_msgpack"]  # NULL: a row created empty (import, another writer)
            state = None if raw is None else msgspec.to_builtins(unpack_state(raw))
            snap.states[str(r["organization_id"])] = {
                "document": state,
                "last_event_at": r["last_event_at"],
                "rescore_due_at": r["rescore_due_at"],
            }
        for r in await conn.fetch("SELECT * FROM success_milestones"):
            key = (str(r["organization_id"]), r["milestone_type"])
            snap.milestones[key] = _row(r, WALL_CLOCK_COLUMNS)
        for r in await conn.fetch("SELECT * FROM support_interactions"):
            row = _row(r, ("created_at", "updated_at"))
            row["field_event_times"] = orjson.loads(r["field_event_times"])
            snap.interactions[str(r["id"])] = row
        for r in await conn.fetch("SELECT * FROM customer_health"):
            # previous_score is the score shown before the last change the projector
            # saw: how often it looked is timing, not a function of the log
            row = _row(r, (*WALL_CLOCK_COLUMNS, "previous_score"))
            row["risk_factors"] = orjson.loads(r["risk_factors"])
            row["feature_usage"] = orjson.loads(r["feature_usage"])
            snap.health[str(r["organization_id"])] = row
        for r in await conn.fetch(
            "SELECT alert_id, organization_id, kind, episode, payload::text AS payload "
            "FROM alert_outbox"
        ):
            payload = orjson.loads(r["payload"])
            snap.alerts[str(r["alert_id"])] = {
                "organization_id": str(r["organization_id"]),
                "kind": r["kind"],
                "episode": r["episode"],
                "payload": payload,
            }
        snap.history_by_cause = {
            r["cause"]: r["n"]
            for r in await conn.fetch(
                "SELECT cause, count(*) AS n FROM health_score_history GROUP BY cause"
            )
        }
        for r in await conn.fetch("SELECT * FROM health_score_history"):
            row = _row(r, ("id", "recorded_at"))
            row["components"] = orjson.loads(r["components"])
            snap.history[(str(r["organization_id"]), r["day"].isoformat())] = row
        snap.offsets = {
            (r["topic"], r["partition"]): int(r["next_offset"])
            for r in await conn.fetch("SELECT topic, partition, next_offset FROM consumer_offsets")
        }
        return snap
    finally:
        await conn.close()


# a row's key: an organization, or (organization, day) for the score history
Key = TypeVar("Key", bound=Hashable)


def diff_fields(
    left: Mapping[Key, Mapping[str, Any]], right: Mapping[Key, Mapping[str, Any]]
) -> dict[str, list[str]]:
    """field name -> keys whose values differ (keys present on both sides)."""
    result: dict[str, list[str]] = {}
    for key in sorted(set(left) & set(right), key=str):
        a, b = left[key], right[key]
        for name in sorted(set(a) | set(b)):
            if a.get(name) != b.get(name):
                result.setdefault(name, []).append(str(key))
    return result


def state_aggregates(document: Mapping[str, Any]) -> dict[str, Any]:
    """The order-independent per-organization aggregates of a state document."""
    return {
        "event_count": document.get("event_count"),
        "totals": document.get("totals"),
        "milestones": document.get("milestones"),
        "first_event_at": document.get("first_event_at"),
        "last_event_at": document.get("last_event_at"),
        "features": document.get("features"),
        "users": document.get("users"),
        "open_interactions": document.get("open_interactions"),
    }


def only(mapping: Mapping[str, Any], orgs: set[str], org_of: str | None = None) -> dict[str, Any]:
    """The entries of `mapping` that belong to `orgs` (keyed by org, or by a field)."""
    if org_of is None:
        return {k: v for k, v in mapping.items() if k in orgs}
    return {k: v for k, v in mapping.items() if v[org_of] in orgs}


def assert_same_event_set_state(a: Snapshot, b: Snapshot) -> None:
    """What is a function of the set of applied events matches (any interleaving)."""
    assert b.processed_events == a.processed_events
    assert set(b.states) == set(a.states)
    aggregates_a = {org: state_aggregates(s["document"]) for org, s in a.states.items()}
    aggregates_b = {org: state_aggregates(s["document"]) for org, s in b.states.items()}
    assert diff_fields(aggregates_a, aggregates_b) == {}
    assert b.milestones == a.milestones
    assert b.interactions == a.interactions
    assert {o: h["health_score"] for o, h in b.health.items()} == {
        o: h["health_score"] for o, h in a.health.items()
    }
    assert {o: h["health_status"] for o, h in b.health.items()} == {
        o: h["health_status"] for o, h in a.health.items()
    }


def assert_identical_for(a: Snapshot, b: Snapshot, orgs: set[str]) -> None:
    """Everything matches for `orgs` (organizations whose event order is fixed)."""
    docs_a = {o: s["document"] for o, s in only(a.states, orgs).items()}
    docs_b = {o: s["document"] for o, s in only(b.states, orgs).items()}
    assert diff_fields(docs_a, docs_b) == {}
    assert diff_fields(only(a.health, orgs), only(b.health, orgs)) == {}
    assert only(b.alerts, orgs, "organization_id") == only(a.alerts, orgs, "organization_id")
    # the score history: each day's last score, whatever the batch cuts
    history_a = {key: row for key, row in a.history.items() if key[0] in orgs}
    history_b = {key: row for key, row in b.history.items() if key[0] in orgs}
    assert history_b.keys() == history_a.keys()
    assert diff_fields(history_a, history_b) == {}


def organizations_by_topic(messages: Iterable[SimulatedMessage]) -> tuple[set[str], set[str]]:
    """(organizations with usage events only, organizations with support events)."""
    all_orgs: set[str] = set()
    support: set[str] = set()
    for m in messages:
        if m.valid and m.organization_id is not None:
            all_orgs.add(m.organization_id)
            if m.topic_kind == "support":
                support.add(m.organization_id)
    return all_orgs - support, support


async def wait_outcomes(
    service: Components,
    predicate: Callable[[list[BatchOutcome]], bool],
    timeout: float = 15.0,
    what: str = "",
) -> list[BatchOutcome]:
    """Wait until the service's recorded batch outcomes satisfy `predicate`; fail
    (AssertionError) if they do not within `timeout` seconds.

    A batch's outcome is recorded after its transaction commits (and after the
    Kafka commit), so the stored offsets can reach the end a moment earlier.
    """
    deadline = time.monotonic() + timeout
    while True:
        outcomes = list(service.outcomes)
        if predicate(outcomes):
            return outcomes
        if time.monotonic() >= deadline:
            break
        await asyncio.sleep(0.05)
    if not what:
        try:
            what = inspect.getsource(predicate).strip()
        except (OSError, TypeError):
            what = repr(predicate)
    rejected: dict[str, int] = {}
    for outcome in outcomes:
        for reason, n in outcome.rejected.items():
            rejected[reason] = rejected.get(reason, 0) + n
    raise AssertionError(
        f"timed out after {timeout}s waiting for batch outcomes that satisfy {what}; "
        f"last {len(outcomes)} outcomes: records={sum(o.records for o in outcomes)} "
        f"applied={sum(o.applied for o in outcomes)} "
        f"duplicates={sum(o.duplicates for o in outcomes)} rejected={rejected}"
    )
