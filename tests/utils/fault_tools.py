"""Helpers for the fault tests: pause a process, read the service's JSON log,
know what a simulated stream must leave behind, and check it in PostgreSQL.

Everything here works against the session's real services; nothing is mocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from healthscore.core.scoring.state import unpack_state
from healthscore_lab.simulator import SimulatedMessage, SimulationConfig, generate, produce
from tests.utils.harness import ServiceProcess, Topics, consume_all, fetchval
from tests.utils.states import event_counts, organizations_without_state

# --------------------------------------------------------------------------- the stream


def simulated_stream(
    events: int, organizations: int, seed: int, duplicate_rate: float = 0.02
) -> list[SimulatedMessage]:
    """A deterministic stream whose events all lie in the recent past."""
    span = timedelta(days=20)
    config = SimulationConfig(
        start=(datetime.now(UTC) - span - timedelta(hours=1)).replace(microsecond=0),
        organizations=organizations,
        events=events,
        seed=seed,
        span=span,
        duplicate_rate=duplicate_rate,
        malformed_rate=0.002,
    )
    return list(generate(config))


@dataclass
class Oracle:
    """What the service must end with after applying `messages` exactly once."""

    event_ids: set[str] = field(default_factory=set)
    per_org: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    malformed: int = 0

    @classmethod
    def of(cls, messages: Iterable[SimulatedMessage]) -> Oracle:
        oracle = cls()
        for m in messages:
            if not m.valid:
                oracle.malformed += 1
                continue
            assert m.event_id is not None and m.organization_id is not None
            if m.event_id in oracle.event_ids:
                oracle.duplicates += 1
                continue
            oracle.event_ids.add(m.event_id)
            oracle.per_org[m.organization_id] += 1
        return oracle


class RecordingProducer:
    """Wraps an aiokafka producer; remembers the last offset written per partition."""

    def __init__(self, producer: Any) -> None:
        self._producer = producer
        self.last_offsets: dict[tuple[str, int], int] = {}

    async def send(self, topic: str, *args: Any, **kwargs: Any) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = await self._producer.send(topic, *args, **kwargs)
        future.add_done_callback(self._record)
        return future

    def _record(self, future: asyncio.Future[Any]) -> None:
        if future.cancelled() or future.exception() is not None:
            return
        meta = future.result()
        tp = (meta.topic, meta.partition)
        self.last_offsets[tp] = max(self.last_offsets.get(tp, -1), meta.offset)


async def produce_stream(
    producer: RecordingProducer,
    messages: list[SimulatedMessage],
    topics: Topics,
    rate: float | None = None,
) -> None:
    await produce(messages, producer, topics.usage, topics.support, rate=rate)


async def output_topics(bootstrap: str, partitions: int = 4) -> tuple[str, str]:
    """A fresh (alerts, health) pair, for a second run reading the same input topics."""
    suffix = uuid.uuid4().hex[:8]
    alerts, health = f"alerts.{suffix}", f"health.{suffix}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(t, partitions, 1) for t in (alerts, health)])
    finally:
        await admin.close()
    return alerts, health


# --------------------------------------------------------------------------- processes


@contextlib.contextmanager
def stopped(pid: int) -> Iterator[float]:
    """SIGSTOP `pid` for the block; SIGCONT it whatever happens. Yields the stop time."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield time.monotonic()
    finally:
        os.kill(pid, signal.SIGCONT)


def log_events(path: str | Path, name: str | None = None) -> list[dict[str, Any]]:
    """The JSON log lines of a `healthscore serve` child (optionally one event name).

    A child SIGKILLed between a record and its newline leaves the record complete
    and the next child's first record on the same line: both are read (a record cut
    before its end is not).
    """
    decoder = json.JSONDecoder()
    found: list[dict[str, Any]] = []
    for line in Path(path).read_text(errors="replace").splitlines():
        at = 0
        while line.startswith("{", at):
            try:
                entry, at = decoder.raw_decode(line, at)
            except ValueError:
                break
            if isinstance(entry, dict) and (name is None or entry.get("event") == name):
                found.append(entry)
    return found


async def wait_logged(service: ServiceProcess, event: str, count: int, timeout: float) -> None:
    """Until the `serve` child has logged `event` `count` times (it must stay alive)."""
    assert service.log_path is not None
    deadline = time.monotonic() + timeout
    while len(log_events(service.log_path, event)) < count:
        assert service.alive, f"serve exited: {log_tail(service.log_path)}"
        assert time.monotonic() < deadline, f"no {event} #{count} within {timeout}s"
        await asyncio.sleep(0.2)


def log_tail(path: str | Path, chars: int = 3000) -> str:
    return Path(path).read_text(errors="replace")[-chars:]


def log_time(entry: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(str(entry["timestamp"]).replace("Z", "+00:00"))


# --------------------------------------------------------------------------- polling


async def poll(
    database_url: str,
    query: str,
    predicate: Callable[[Any], bool],
    timeout: float,
    what: str = "",
    also: Callable[[], None] | None = None,
    *args: Any,
    interval: float = 0.2,
) -> Any:
    """Poll a query until predicate(value); connection errors (a restarting server) retry."""
    deadline = time.monotonic() + timeout
    value: Any = None
    while time.monotonic() < deadline:
        if also is not None:
            also()  # e.g. fail fast when a child process died
        try:
            value = await fetchval(database_url, query, *args)
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            value = exc
        else:
            if predicate(value):
                return value
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or query}; last {value!r}")


async def wait_processed(
    database_url: str,
    at_least: int,
    timeout: float = 30.0,
    *,
    exactly: bool = False,
    also: Callable[[], None] | None = None,
) -> int:
    """Wait until `processed_events` holds at least `at_least` event ids (with `exactly`,
    that many and no more); how many. A failing connection (a restarting server) is
    tried again; `also` runs before each look (e.g. to fail fast when a child died)."""
    wanted = at_least
    counted = await poll(
        database_url,
        "SELECT count(*) FROM processed_events",
        (lambda n: n == wanted) if exactly else (lambda n: n >= wanted),
        timeout,
        f"{'' if exactly else 'at least '}{wanted} processed events",
        also,
        interval=0.1,
    )
    return int(counted)


async def wait_all_applied(
    database_url: str,
    oracle: Oracle,
    timeout: float,
    also: Callable[[], None] | None = None,
    *,
    last_offsets: dict[tuple[str, int], int] | None = None,
    group: str | None = None,
) -> None:
    """Every valid event applied and every alert published; with `last_offsets`
    and `group`, also the stored progress at the end of every partition.

    The progress wait matters: a partition's trailing duplicates or malformed
    records add no processed event, so "all applied" can be true one batch
    before the consumer has committed its way past them.
    """
    await wait_processed(database_url, len(oracle.event_ids), timeout, exactly=True, also=also)
    await poll(
        database_url,
        "SELECT count(*) FROM alert_outbox WHERE published_at IS NULL",
        lambda n: n == 0,
        timeout,
        "every alert published",
        also,
    )
    if last_offsets is not None and group is not None:
        ends = {tp: last + 1 for tp, last in last_offsets.items()}
        await poll(
            database_url,
            "SELECT coalesce(jsonb_object_agg(topic || ':' || partition, next_offset), '{}')"
            "::text FROM consumer_offsets WHERE consumer_group = $1",
            lambda stored: orjson.loads(stored) == {f"{t}:{p}": n for (t, p), n in ends.items()},
            timeout,
            f"stored offsets at the end of every partition {ends}",
            also,
            group,
        )


# --------------------------------------------------------------------------- checks


async def assert_exactly_once(
    database_url: str, oracle: Oracle, last_offsets: dict[tuple[str, int], int], group: str
) -> None:
    """Every valid event applied exactly once, progress stored to the end of every partition."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT event_id FROM processed_events")
        ids = {str(r["event_id"]) for r in rows}
        counts = await event_counts(conn)
        empty = await organizations_without_state(conn)
        offsets = {
            (r["topic"], r["partition"]): r["next_offset"]
            for r in await conn.fetch(
                "SELECT topic, partition, next_offset FROM consumer_offsets "
                "WHERE consumer_group = $1",
                group,
            )
        }
    finally:
        await conn.close()
    assert ids == oracle.event_ids
    assert counts == dict(oracle.per_org)
    assert empty == set(), "state rows created and never saved"
    assert offsets == {tp: last + 1 for tp, last in last_offsets.items()}


async def assert_alerts_published(
    bootstrap: str, database_url: str, alert_topic: str, timeout: float = 30.0
) -> tuple[int, int]:
    """Every outbox alert is on the alert topic (at least once), each organization's
    first seen in the order they were raised (re-sends may follow). Returns (alerts,
    copies)."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT alert_id, organization_id, published_at FROM alert_outbox ORDER BY seq"
        )
    finally:
        await conn.close()
    expected = {str(r["alert_id"]) for r in rows}
    # no alert: every check below would hold vacuously (model changes have emptied
    # fault streams of alerts before)
    assert expected, "the stream raised no alert: choose one that does"
    assert all(r["published_at"] is not None for r in rows)
    seen = await read_topic(
        bootstrap, alert_topic, lambda recs: _alert_ids(recs) >= expected, timeout
    )
    ids = [orjson.loads(r.value)["alert_id"] for r in seen]
    assert set(ids) == expected, f"missing {expected - set(ids)}, unknown {set(ids) - expected}"
    raised: dict[bytes, list[str]] = defaultdict(list)
    for r in rows:
        raised[str(r["organization_id"]).encode()].append(str(r["alert_id"]))
    first_seen: dict[bytes, list[str]] = defaultdict(list)
    for record, alert_id in zip(seen, ids, strict=True):
        if alert_id not in first_seen[record.key]:
            first_seen[record.key].append(alert_id)
    assert first_seen == raised, "an organization's alerts left out of the order raised"
    return len(expected), len(ids)


def _alert_ids(records: list[Any]) -> set[str]:
    return {orjson.loads(r.value)["alert_id"] for r in records}


async def read_topic(
    bootstrap: str,
    topic: str,
    done: Callable[[list[Any]], bool],
    timeout: float = 30.0,
) -> list[Any]:
    """Read a topic from the beginning until done(records), then what is left of it."""
    return await consume_all(bootstrap, topic, timeout=timeout, done=done)


async def dead_letter_sources(bootstrap: str, topics: Topics) -> set[Any]:
    """Distinct (topic, partition, offset) source coordinates in the two DLQ topics."""
    sources: set[Any] = set()
    for topic in (topics.dlq_usage, topics.dlq_support):
        records = await read_topic(bootstrap, topic, lambda _: True, timeout=10.0)
        for r in records:
            h = dict(r.headers)
            sources.add((h["x-source-topic"], h["x-source-partition"], h["x-source-offset"]))
    return sources


# --------------------------------------------------------------------------- snapshots


SNAPSHOT_QUERIES: dict[str, str] = {
    "processed_events": "SELECT event_id FROM processed_events ORDER BY 1",
    "org_aggregates": (
        "SELECT organization_id, state_msgpack, last_event_at FROM organization_state ORDER BY 1"
    ),
    "milestones": (
        "SELECT organization_id, milestone_type, achieved_at, triggering_event_id, "
        "health_score_impact, reward_type, reward_value FROM success_milestones ORDER BY 1, 2"
    ),
    "support_interactions": (
        "SELECT * FROM support_interactions ORDER BY id"  # created_at/updated_at dropped below
    ),
    "scores": (
        "SELECT organization_id, health_score, health_status, engagement_score, adoption_score, "
        "milestone_score, support_score, growth_score, active_users_30d, open_interactions, "
        "milestones_achieved, last_activity_at, last_login_at, scored_at, feature_usage "
        "FROM customer_health ORDER BY 1"
    ),
    "churn": (
        "SELECT organization_id, churn_probability, risk_level FROM customer_health ORDER BY 1"
    ),
    "alerts": (
        "SELECT alert_id, organization_id, kind, episode, "
        "payload - 'emitted_at' AS payload FROM alert_outbox ORDER BY 1"
    ),
}
WALL_CLOCK_COLUMNS = {"created_at", "updated_at"}


async def snapshot(database_url: str) -> dict[str, list[dict[str, Any]]]:
    conn = await asyncpg.connect(database_url)
    try:
        result: dict[str, list[dict[str, Any]]] = {}
        for name, query in SNAPSHOT_QUERIES.items():
            rows = await conn.fetch(query)
            result[name] = [_snapshot_row(r) for r in rows]
        return result
    finally:
        await conn.close()


def _snapshot_row(row: Any) -> dict[str, Any]:
    out = {k: _plain(v) for k, v in dict(row).items() if k not in WALL_CLOCK_COLUMNS}
    raw = out.pop("state_msgpack", None)
    if raw is not None:  # what SQL cannot read of the stored state
        state = unpack_state(raw)
        out["event_count"], out["totals"] = state.event_count, state.totals
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in "[{":
        with contextlib.suppress(orjson.JSONDecodeError):
            return orjson.loads(value)
    return value


def diff_rows(
    left: list[dict[str, Any]], right: list[dict[str, Any]], key: str = "organization_id"
) -> list[tuple[Any, dict[str, tuple[Any, Any]]]]:
    """Per key, the columns whose values differ (left, right)."""
    lmap = {r[key]: r for r in left}
    rmap = {r[key]: r for r in right}
    out: list[tuple[Any, dict[str, tuple[Any, Any]]]] = []
    for k in sorted(set(lmap) | set(rmap), key=str):
        a, b = lmap.get(k, {}), rmap.get(k, {})
        cols = {c: (a.get(c), b.get(c)) for c in set(a) | set(b) if a.get(c) != b.get(c)}
        if cols:
            out.append((k, cols))
    return out


# --------------------------------------------------------------------------- async tasks


@contextlib.asynccontextmanager
async def background(coro: Awaitable[Any]) -> AsyncIterator[asyncio.Task[Any]]:
    """Run `coro` as a task for the block; cancel it if still running at the end."""
    task = asyncio.ensure_future(coro)
    try:
        yield task
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


# --------------------------------------------------------------------------- the pure core


@dataclass
class PureRun:
    """The pure core's verdict on a stream applied in one given order."""

    scores: dict[str, float]
    churn: dict[str, float]
    alerts: set[str]


def pure_run(messages: Iterable[SimulatedMessage], support_last: bool = False) -> PureRun:
    """Apply the valid, first-seen events in wire order (or every usage event first,
    then every support event: another legal interleaving of the two topics)."""
    from healthscore.contracts import SupportEvent, UsageEvent
    from healthscore.core import events as core
    from healthscore.core.effects import compute_batch_effects
    from healthscore.core.scoring.model import default_model
    from healthscore.service.ingest.decode import core_event
    from healthscore.service.projector import project

    seen: set[str] = set()
    events: list[core.Event] = []
    for m in messages:
        if not m.valid or m.event_id in seen:
            continue
        assert m.event_id is not None
        seen.add(m.event_id)
        body = orjson.loads(m.value)
        events.append(
            core_event(
                UsageEvent.model_validate(body)
                if m.topic_kind == "usage"
                else SupportEvent.model_validate(body)
            )
        )
    if support_last:
        events.sort(
            key=lambda e: isinstance(e, core.SupportEvent)
        )  # stable: keeps each topic's order
    model = default_model()
    effects = compute_batch_effects(events, {}, {}, model)
    # what the read model shows: each state scored as of its newest event (the last
    # events need not have been decision points)
    read = {org: project(effects.states[org], model) for org in effects.changed()}
    return PureRun(
        scores={org: h.score for org, h in read.items() if h is not None},
        churn={org: h.churn_probability for org, h in read.items() if h is not None},
        alerts={str(a.decision.alert_id) for a in effects.alerts},
    )
