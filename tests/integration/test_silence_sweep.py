"""Silence is a signal: quiet organizations drift down and alert, on the log's clock.

State is created through the real `BatchPipeline` (the silence rescorings on,
as `serve` runs it). The sweep's clock is the log's watermark: the oldest of
the partitions' newest applied event times, moved here by feeding events, never
by the wall clock. Silence rescorings fall on a fixed event-time grid (the
multiples of the step), so they do not depend on when the sweep runs or how
the log was cut into batches: a batch makes the ones due before an event
itself. Two sweepers on separate pools run concurrently and must never both
rescore (transaction-level advisory lock).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from structlog.testing import capture_logs

from healthscore.contracts.enums import AlertKind
from healthscore.core.effects import compute_batch_effects, compute_silence_effects
from healthscore.core.scoring.alerts import alert_id_for
from healthscore.core.scoring.model import default_model
from healthscore.service import sweep as sweep_module
from healthscore.service.ingest import pipeline as pipeline_module
from healthscore.service.ingest.decode import Decoder, RawRecord
from healthscore.service.ingest.pipeline import BatchPipeline
from healthscore.service.kafka_clients import KafkaConnection
from healthscore.service.ops.lag import UnreadPartitions
from healthscore.service.periodic import AT_ONCE
from healthscore.service.projector import Projector
from healthscore.service.sweep import SilenceSweep
from healthscore.store import locks
from healthscore.store.db import create_pool
from tests.conftest import DatabaseFactory
from tests.utils.harness import make_topics
from tests.utils.scenarios import Snapshot, snapshot

USAGE, SUPPORT = "usage.sweep", "support.sweep"
GROUP = "sweep-test"
STEP = 6 * 3600.0
# a multiple of the step, so the expected rescoring times read simply
LAST = datetime.fromtimestamp(
    (datetime.now(UTC) - timedelta(days=90)).timestamp() // STEP * STEP, UTC
)
Event = tuple[str, str, datetime, dict[str, Any]]


def _any_org(name: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"sweep-{name}"))


def _org(name: str) -> str:
    """An organization whose silence grid has phase 0 (its points are multiples of
    the step), so that the expected rescoring times read simply."""
    n = uuid.UUID(_any_org(name)).int
    return str(uuid.UUID(int=n - n % int(STEP * 1000)))


def _at(hours: float) -> datetime:
    return LAST + timedelta(hours=hours)


def _scores(event_times: list[datetime], until: datetime) -> list[tuple[datetime, str]]:
    """Every score of a phase-0 organization with these events, the log applied below `until`.

    (scored_at, cause) in order: one after each event; one at each grid point (a
    multiple of the step) a step or more after its newest event and before its next
    event, or before `until`.
    """
    scores: list[tuple[datetime, str]] = []
    newest: datetime | None = None
    for at in [*sorted(event_times), None]:
        if newest is not None:
            point = datetime.fromtimestamp(
                math.ceil((newest.timestamp() + STEP) / STEP) * STEP, UTC
            )
            while point < (until if at is None else at):
                scores.append((point, "sweep"))
                point += timedelta(seconds=STEP)
        if at is not None:
            scores.append((at, "events"))
            newest = at
    return scores


def _daily_last(scores: list[tuple[datetime, str]]) -> list[tuple[datetime, str]]:
    """The score history rows of `scores`: each (UTC) day's last score."""
    days = {at.date(): (at, cause) for at, cause in scores}
    return sorted(days.values())


def _swept_days(events: list[Event], until: datetime) -> list[datetime]:
    """The `sweep` rows after LAST (SWEEP_HISTORY) the history holds for `events`."""
    times = [at for _, _, at, _ in events]
    rows = _daily_last(_scores(times, until))
    return [at for at, cause in rows if cause == "sweep" and at > LAST]


class Feed:
    """Usage events into the real pipeline, with consecutive offsets per partition."""

    def __init__(self, pipeline: BatchPipeline, usage: str = USAGE) -> None:
        self.pipeline = pipeline
        self.usage = usage
        self.offsets: dict[int, int] = {}
        # the read model: projected from the state, as the service does
        self.projector = Projector(pipeline._pool, default_model(), None, None)

    def records(self, events: list[Event], partition: int = 0) -> list[RawRecord]:
        """The Kafka records of `events` (event ids derived from the content: a log)."""
        records = []
        for org, kind, at, extra in events:
            offset = self.offsets.get(partition, 0)
            self.offsets[partition] = offset + 1
            body = {
                "event_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{partition}:{offset}:{org}")),
                "organization_id": org,
                "type": kind,
                "occurred_at": at.isoformat(),
                **extra,
            }
            ts = int(at.timestamp() * 1000)
            value = orjson.dumps(body)
            records.append(RawRecord(self.usage, partition, offset, org.encode(), value, ts))
        return records

    async def apply(self, records: list[RawRecord]) -> None:
        outcome = await self.pipeline.process(records)
        assert outcome.applied == len(records) and not outcome.rejected

    async def send(self, events: list[Event], partition: int = 0) -> None:
        await self.apply(self.records(events, partition))


@contextlib.asynccontextmanager
async def _pipeline(
    database_url: str, bootstrap: str, usage: str = USAGE, support: str = SUPPORT
) -> AsyncIterator[Feed]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False)
    await producer.start()
    pool = await create_pool(database_url, "healthscore_writer")
    try:
        yield Feed(
            BatchPipeline(
                pool=pool,
                decoder=Decoder(usage, support, 64 * 1024),
                model=default_model(),
                consumer_group=GROUP,
                rescore_step_seconds=STEP,
                silence_rescoring=True,
            ),
            usage,
        )
    finally:
        await pool.close()
        await producer.stop()


def _sweep(feed: Feed, **options: Any) -> SilenceSweep:
    return SilenceSweep(
        feed.pipeline._pool, default_model(), GROUP, STEP, topics=[USAGE, SUPPORT], **options
    )


def _active_history(org: str, end: datetime, days: int = 14) -> list[Event]:
    """`days` of steady use by three users, ending at `end`."""
    users = [str(uuid.uuid5(uuid.NAMESPACE_URL, f"{org}-user-{i}")) for i in range(3)]
    features = ["calendar", "invoices", "contracts", "questionnaires", "gallery"]
    events: list[Event] = [
        (org, "onboarding_completed", end - timedelta(days=days), {"user_id": users[0]}),
        (org, "client_added", end - timedelta(days=days - 1), {"quantity": 12}),
        (org, "payment_received", end - timedelta(days=days - 4), {}),
    ]
    for day in range(days, -1, -1):
        for u, user in enumerate(users):
            at = end - timedelta(days=day, hours=u + 1)
            events.append((org, "login", at, {"user_id": user}))
            feature = features[(day + u) % len(features)]
            events.append((org, "feature_used", at, {"user_id": user, "feature": feature}))
    events.append((org, "email_sent", end, {"quantity": 3}))
    return sorted(events, key=lambda e: e[2])


def _clock(start_hours: float, end_hours: float) -> list[Event]:
    """Logins of a busy organization on every grid point: it moves the watermark and is
    never silent for a whole step (the grid point of its next event is not before it)."""
    org = _org("clock")
    hours = range(int(start_hours), int(end_hours) + 1, int(STEP // 3600))
    return [(org, "login", _at(h), {}) for h in hours]


async def _health(feed: Feed, conn: asyncpg.Connection[Any], org: str) -> asyncpg.Record:
    """The organization's read-model row once the projector has caught up."""
    await feed.projector.drain()
    return await _row(conn, HEALTH, org)


async def _row(conn: asyncpg.Connection[Any], query: str, org: str) -> asyncpg.Record:
    row: asyncpg.Record | None = await conn.fetchrow(query, uuid.UUID(org))
    assert row is not None
    return row


HEALTH = """
SELECT h.health_score::float8 AS score, h.scored_at, s.rescore_due_at, s.last_event_at
FROM customer_health h JOIN organization_state s USING (organization_id)
WHERE h.organization_id = $1
"""

# history rows after LAST whose day ended in a silence rescoring (an active organization
# has some too, overnight)
SWEEP_HISTORY = """
SELECT scored_at, health_score::float8 AS score FROM health_score_history
WHERE organization_id = $1 AND cause = 'sweep' AND scored_at > $2 ORDER BY scored_at
"""


async def test_quiet_organization_drifts_down_and_alerts(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    quiet, recent = _org("quiet"), _org("recent")
    quiet_events = _active_history(quiet, LAST)
    async with _pipeline(migrated_database, kafka_bootstrap) as feed:
        await feed.send(quiet_events)
        await feed.send(_active_history(recent, _at(44)))
        sweep = _sweep(feed)
        conn = await asyncpg.connect(migrated_database)
        try:
            start = await _health(feed, conn, quiet)
            assert start["scored_at"] == start["last_event_at"] == LAST
            assert start["rescore_due_at"] == _at(6)  # the next grid point a step on
            assert start["score"] >= 70, "the active organization must start healthy"
            # the log's watermark is the recent organization's last event: quiet is
            # due at +6h .. +42h; recent (last event +44h) at +54h, the grid point a step on
            recent_row = await _health(feed, conn, recent)
            assert recent_row["rescore_due_at"] == _at(54)
            assert await sweep.run_once() == 1
            assert await sweep.run_once() == 0  # nothing due any more below the watermark
            assert sweep.rescorings == 7  # +6h .. +42h
            after = await _health(feed, conn, quiet)
            assert after["score"] < start["score"]
            assert after["scored_at"] == _at(42)
            assert after["rescore_due_at"] == _at(48)
            assert after["last_event_at"] == LAST  # time passed; no event did
            # the history: each day's last score
            swept = await conn.fetch(SWEEP_HISTORY, uuid.UUID(quiet), LAST)
            assert [h["scored_at"] for h in swept] == _swept_days(quiet_events, _at(44))
            assert swept[-1]["scored_at"] == _at(42) and len(swept) in (2, 3)
            untouched = await _health(feed, conn, recent)
            assert untouched["scored_at"] == _at(44)

            # a month of other organizations' events move the watermark; the sweep
            # runs every 12 hours of event time (30 days on, the last active users and
            # features leave their 30-day windows)
            for hours in range(48, 31 * 24 + 1, 12):
                await feed.send(_clock(hours - 12, hours))
                await sweep.drain()
                row = await _health(feed, conn, quiet)
                # rescored up to the last grid point below the watermark (the clock's event)
                assert row["scored_at"] == _at(hours - 6)
                assert row["rescore_due_at"] == _at(hours)
            swept = await conn.fetch(SWEEP_HISTORY, uuid.UUID(quiet), LAST)
            assert [h["scored_at"] for h in swept] == _swept_days(quiet_events, _at(31 * 24))
            assert len(swept) in (31, 32) and swept[-1]["scored_at"] == _at(31 * 24 - 6)
            scores = [start["score"]] + [h["score"] for h in swept]
            assert all(b <= a for a, b in itertools.pairwise(scores)), scores
            assert scores[-1] < scores[0] - 15
            clock = await conn.fetchval(
                "SELECT count(*) FROM health_score_history WHERE organization_id = $1 "
                "AND cause = 'sweep'",
                uuid.UUID(_org("clock")),
            )
            assert clock == 0, "an organization with an event every step is never silent"

            history = await conn.fetch(
                "SELECT scored_at, cause FROM health_score_history "
                "WHERE organization_id = $1 ORDER BY scored_at",
                uuid.UUID(quiet),
            )
            # the two weeks of activity came in one batch, the silence after them in many
            # sweeps: one row per day, the day's last score (an event's or a silence
            # rescoring's), from the first day of activity to the last rescoring
            times = [at for _, _, at, _ in quiet_events]
            expected = _daily_last(_scores(times, _at(31 * 24)))
            assert [(h["scored_at"], h["cause"]) for h in history] == expected
            days = [h["scored_at"].date() for h in history]
            assert all(b - a == timedelta(days=1) for a, b in itertools.pairwise(days))

            alerts = await conn.fetch(
                "SELECT alert_id, kind, payload::text AS payload FROM alert_outbox "
                "WHERE organization_id = $1 ORDER BY seq",
                uuid.UUID(quiet),
            )
            assert [a["kind"] for a in alerts][:1] == ["risk_raised"], scores
            raised = orjson.loads(alerts[0]["payload"])
            raised_at = datetime.fromisoformat(raised["scored_at"])
            # raised by the sweep, on the grid, not by an event
            assert raised_at > LAST and raised_at.timestamp() % STEP == 0
            assert alerts[0]["alert_id"] == alert_id_for(
                quiet, 1, AlertKind.RISK_RAISED, raised_day=int(raised_at.timestamp() // 86400)
            )
            # the fitted models raise from their enter threshold (v3: 0.3, risk level medium) up
            assert raised["churn_probability"] >= default_model().alerts.enter_probability
            assert raised["trigger"] == "probability_threshold", raised
            assert raised["risk_factors"] and raised["caused_by"]
            print(f"\nquiet organization: score {scores[0]} -> {scores[-1]} over 31 days")
            print("alerts:", [(a["kind"], orjson.loads(a["payload"])["scored_at"]) for a in alerts])
        finally:
            await conn.close()


async def test_a_partition_that_stops_holds_the_sweep_back(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    """The watermark is the oldest partition's: a stopped producer is not silence."""
    quiet = _org("held-quiet")
    quiet_events = _active_history(quiet, LAST)
    async with _pipeline(migrated_database, kafka_bootstrap) as feed:
        await feed.send(quiet_events, partition=0)
        sweep = _sweep(feed)
        # partition 1 runs on for ten days; partition 0 delivers nothing after LAST
        await feed.send(_clock(0, 240), partition=1)
        assert await sweep.run_once() == 0
        assert await sweep.backlog() == 0
        conn = await asyncpg.connect(migrated_database)
        try:
            assert await conn.fetch(SWEEP_HISTORY, uuid.UUID(quiet), LAST) == []
            # one event on partition 0, three days on: the watermark moves to it
            other = _org("held-other")
            await feed.send([(other, "login", _at(72), {})], partition=0)
            assert await sweep.backlog() == 1
            assert await sweep.run_once() == 1
            assert sweep.rescorings == 11  # +6h .. +66h
            swept = await conn.fetch(SWEEP_HISTORY, uuid.UUID(quiet), LAST)
            assert [h["scored_at"] for h in swept] == _swept_days(quiet_events, _at(72))
            assert swept[-1]["scored_at"] == _at(66)

            # a due time stored under another step: taken once, nothing due, moved on
            await conn.execute(
                "UPDATE organization_state SET rescore_due_at = $2 WHERE organization_id = $1",
                uuid.UUID(quiet),
                _at(1),
            )
            assert await sweep.run_once() == 1
            assert await sweep.run_once() == 0
            due = await conn.fetchval(
                "SELECT rescore_due_at FROM organization_state WHERE organization_id = $1",
                uuid.UUID(quiet),
            )
            assert due == _at(72)
            assert len(await conn.fetch(SWEEP_HISTORY, uuid.UUID(quiet), LAST)) == len(swept)
        finally:
            await conn.close()


def _silent_log() -> list[Event]:
    """A month of organizations that go quiet: for a week and back, for good, in gaps."""
    log: list[Event] = []
    log += _active_history(_any_org("steady"), _at(30 * 24))
    log += _active_history(_any_org("gone"), _at(12 * 24), days=10)
    back = _any_org("back")
    log += _active_history(back, _at(10 * 24), days=9)  # a week of silence, then back
    log += [e for e in _active_history(back, _at(30 * 24), days=12) if e[2] > _at(17 * 24)]
    rng = random.Random(3)
    sparse = _any_org("sparse")
    hours = 0.0
    while hours < 30 * 24:
        log.append((sparse, rng.choice(["login", "feature_used"]), _at(hours), {}))
        hours += rng.choice([0.5, 5, 7, 13, 30, 70])
    return sorted(log, key=lambda e: e[2])


async def _sweep_rows(database_url: str) -> list[tuple[str, datetime, float, float]]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT organization_id, scored_at, health_score::float8 AS score, "
            "churn_probability::float8 AS p FROM health_score_history WHERE cause = 'sweep'"
        )
    finally:
        await conn.close()
    return sorted((str(r["organization_id"]), r["scored_at"], r["score"], r["p"]) for r in rows)


async def test_silence_rescorings_do_not_depend_on_batch_cuts_or_sweep_timing(
    database_factory: DatabaseFactory, migrated_template: str, kafka_bootstrap: str
) -> None:
    """The same log, cut into batches of 1-7 records with a sweep after each, and as one
    batch swept once at the end: the same rescorings, alerts and states.

    In the first run the sweep rescores an organization that comes back later
    while it is still silent; in the second its whole silence is rescored by the
    batch that applies its return, with later events already in the same batch.
    """
    log = _silent_log()
    results: list[tuple[Snapshot, list[tuple[str, datetime, float, float]]]] = []
    for small_batches in (True, False):
        database = await database_factory(template=migrated_template)
        async with _pipeline(database, kafka_bootstrap) as feed:
            records = feed.records(log)
            sweep = _sweep(feed)
            if small_batches:
                rng = random.Random(9)
                position = 0
                while position < len(records):
                    size = rng.randint(1, 7)
                    await feed.apply(records[position : position + size])
                    position += size
                    await sweep.drain()
            else:
                await feed.apply(records)
                await sweep.drain()
            assert await sweep.backlog() == 0
            await feed.projector.drain()
        results.append((await snapshot(database), await _sweep_rows(database)))
    (small, small_sweeps), (whole, whole_sweeps) = results

    assert small_sweeps == whole_sweeps
    assert small.alerts == whole.alerts  # ids, kinds, episodes and whole payloads
    assert small.states == whole.states  # state documents, last_event_at, rescore_due_at
    assert small.health == whole.health

    swept = {org for org, _, _, _ in whole_sweeps}
    assert {_any_org("gone"), _any_org("back"), _any_org("sparse")} <= swept
    back_times = [at for org, at, _, _ in whole_sweeps if org == _any_org("back")]
    return_at = min(e[2] for e in log if e[0] == _any_org("back") and e[2] > _at(10 * 24))
    assert any(at < return_at for at in back_times), "silence before the return"
    first: dict[str, datetime] = {}
    for org, at, _, _ in whole_sweeps:  # each organization on its own grid, a step apart
        assert (at - first.setdefault(org, at)) % timedelta(seconds=STEP) == timedelta(0)
    points = {(org, at) for org, at, _, _ in whole_sweeps}
    raised_by_silence = [
        alert
        for alert in whole.alerts.values()
        if (alert["organization_id"], datetime.fromisoformat(alert["payload"]["scored_at"]))
        in points
    ]
    print(
        f"\n{len(whole_sweeps)} silence rescorings, {len(whole.alerts)} alerts "
        f"({len(raised_by_silence)} on silence)"
    )


async def test_two_sweepers_never_both_sweep(migrated_database: str, kafka_bootstrap: str) -> None:
    orgs = [_any_org(f"many-{i}") for i in range(300)]  # at all phases
    async with _pipeline(migrated_database, kafka_bootstrap) as feed:
        await feed.send([(org, "login", LAST, {}) for org in orgs])
    model = default_model()
    pools = [await create_pool(migrated_database, "healthscore_writer") for _ in range(2)]
    sweepers = [SilenceSweep(pool, model, GROUP, STEP, topics=[USAGE, SUPPORT]) for pool in pools]
    conn = await asyncpg.connect(migrated_database)
    try:
        # while another session holds the leader lock, a sweeper does nothing at all
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", locks.SWEEP)
            assert await sweepers[0].run_once(watermark=LAST + timedelta(days=1)) == 0
        assert await _sweep_count(conn) == 0

        for day in range(1, 6):
            watermark = LAST + timedelta(days=day)
            results = await asyncio.gather(*(s.run_once(watermark=watermark) for s in sweepers))
            assert sorted(results) == [0, len(orgs)], results
            # every point of its grid below the watermark once: 4 a day, the first a step
            # or more after LAST
            assert sum(s.rescorings for s in sweepers) == (4 * day - 1) * len(orgs), (
                "an organization was rescored twice at one point"
            )
            # each organization's history is at its last grid point below the watermark
            latest = await conn.fetch(
                "SELECT organization_id, max(scored_at) AS at FROM health_score_history "
                "WHERE cause = 'sweep' GROUP BY organization_id"
            )
            assert len(latest) == len(orgs)
            assert all(watermark - timedelta(seconds=STEP) <= r["at"] < watermark for r in latest)
        assert sum(s.runs for s in sweepers) == 5
    finally:
        await conn.close()
        for pool in pools:
            await pool.close()


@contextlib.asynccontextmanager
async def _computations(
    monkeypatch: pytest.MonkeyPatch, module: Any, name: str, compute: Callable[..., Any]
) -> AsyncIterator[list[tuple[int, int]]]:
    """`module.name` (`compute`) spied on while a ticker task counts the event loop's
    turns: (turns so far, silence rescorings made) per computation. Two computations
    with the same count ran without the loop running anything between them."""
    ticks = 0
    calls: list[tuple[int, int]] = []

    def spied(*args: Any, **kwargs: Any) -> Any:
        effects = compute(*args, **kwargs)
        calls.append((ticks, effects.silence_rescored))
        return effects

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0)
            ticks += 1

    monkeypatch.setattr(module, name, spied)
    running = asyncio.create_task(ticker())
    try:
        yield calls
    finally:
        running.cancel()


async def test_a_page_shares_the_event_loop_and_keeps_to_its_budget(
    migrated_database: str, kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A month of silence for 300 organizations: each page makes at most SWEEP_BUDGET
    rescorings, computed SWEEP_SLICE at most between two yields of the event loop (the
    consumer's batches and heartbeats share it), and the pages together make every one."""
    orgs = [_any_org(f"month-{i}") for i in range(300)]
    async with _pipeline(migrated_database, kafka_bootstrap) as feed:
        await feed.send([(org, "login", LAST, {}) for org in orgs])
        sweeper = _sweep(feed)
        async with _computations(
            monkeypatch, sweep_module, "compute_silence_effects", compute_silence_effects
        ) as calls:
            watermark = LAST + timedelta(days=30)
            pages = []
            while taken := await sweeper.run_once(watermark=watermark):
                pages.append((taken, sum(made for _, made in calls)))
                assert len(calls) > 1
                assert all(made <= sweep_module.SWEEP_SLICE for _, made in calls)
                assert all(b[0] > a[0] for a, b in itertools.pairwise(calls)), (
                    "two slices computed without the loop running anything between them"
                )
                assert 0 < pages[-1][1] <= sweep_module.SWEEP_BUDGET
                calls.clear()
        due = sum(len(_scores([LAST], watermark)) - 1 for _ in orgs)  # all but the login
        assert len(pages) >= math.ceil(due / sweep_module.SWEEP_BUDGET)
        assert sweeper.rescorings == sum(made for _, made in pages) == due


async def test_a_batch_ending_long_silences_shares_the_event_loop(
    migrated_database: str, kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch whose 60 events each end a month of silence (119 rescorings apiece, in
    one transaction): the pipeline computes them SILENCE_SLICE at most between two
    yields of the event loop (heartbeats, the projector and the ops endpoints share
    it), and makes every one."""
    orgs = [_org(f"batch-month-{i}") for i in range(60)]
    back = LAST + timedelta(days=30)
    async with _pipeline(migrated_database, kafka_bootstrap) as feed:
        await feed.send([(org, "login", LAST, {}) for org in orgs])
        async with _computations(
            monkeypatch, pipeline_module, "compute_batch_effects", compute_batch_effects
        ) as calls:
            outcome = await feed.pipeline.process(
                feed.records([(org, "login", back, {}) for org in orgs])
            )
    assert outcome.transactions == 1 and outcome.applied == len(orgs)
    assert len(calls) >= math.ceil(60 * 119 / pipeline_module.SILENCE_SLICE)
    assert all(made <= pipeline_module.SILENCE_SLICE for _, made in calls)
    assert all(b[0] > a[0] for a, b in itertools.pairwise(calls)), (
        "two slices computed without the loop running anything between them"
    )
    due = sum(len(_scores([LAST, back], back)) - 2 for _ in orgs)  # all but the logins
    assert sum(made for _, made in calls) == due == 60 * 119


async def _sweep_count(conn: asyncpg.Connection[Any]) -> int:
    n = await conn.fetchval("SELECT count(*) FROM health_score_history WHERE cause = 'sweep'")
    return int(n)


def _support_record(
    org: str, action: str, at: datetime, partition: int, offset: int, topic: str = SUPPORT
) -> RawRecord:
    body = {
        "event_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"support:{partition}:{offset}:{org}")),
        "organization_id": org,
        "interaction_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{org}-{action}-complaint")),
        "action": action,
        "interaction_type": "complaint",
        "channel": "email",
        "priority": "urgent",
        "sentiment": "negative",
        "occurred_at": at.isoformat(),
    }
    ts = int(at.timestamp() * 1000)
    return RawRecord(topic, partition, offset, org.encode(), orjson.dumps(body), ts)


async def _in_the_log(bootstrap: str, records: list[RawRecord]) -> None:
    """Produce `records` for real, each at the offset it names."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False)
    await producer.start()
    try:
        for record in records:
            sent = await producer.send_and_wait(
                record.topic,
                record.value,
                key=record.key,
                partition=record.partition,
                timestamp_ms=record.timestamp_ms,
            )
            assert sent.offset == record.offset
    finally:
        await producer.stop()


async def _live_then_late(
    database_url: str, bootstrap: str, delivered_support_before: bool, *, ask_the_log: bool
) -> list[tuple[str, datetime, float, float]]:
    """Usage for ten days (the quiet organization's ends at LAST), the sweep, then a
    complaint of the quiet organization two days after LAST that its support partition
    delivers only now (that partition was behind: the complaint is in its log all along).
    With `delivered_support_before`, the support partition had delivered one record
    (another organization's, at LAST) first. `ask_the_log`: the sweep asks the brokers
    which partitions without stored progress hold records, as `serve` does."""
    quiet, other = _org("late-quiet"), _org("late-other")
    topics = await make_topics(bootstrap, partitions=2)
    earlier = [_support_record(other, "opened", LAST, 0, 0, topics.support)]
    if not delivered_support_before:
        earlier = []
    complaint = _support_record(quiet, "opened", _at(48), 0, len(earlier), topics.support)
    await _in_the_log(bootstrap, [*earlier, complaint])
    async with _pipeline(database_url, bootstrap, topics.usage, topics.support) as feed:
        unread = UnreadPartitions(KafkaConnection(bootstrap), [topics.usage, topics.support])
        sweep = SilenceSweep(
            feed.pipeline._pool,
            default_model(),
            GROUP,
            STEP,
            topics=[topics.usage, topics.support],
            unread=unread if ask_the_log else None,
        )
        if earlier:
            await feed.apply(earlier)
        await feed.send(_active_history(quiet, LAST), partition=0)
        await feed.send(_clock(0, 240), partition=1)
        await feed.send([(other, "login", _at(240), {})], partition=0)
        await sweep.drain()
        await feed.apply([complaint])
        await sweep.drain()
    return [row for row in await _sweep_rows(database_url) if row[0] == quiet]


@pytest.mark.parametrize("ask_the_log", [True, False])
async def test_a_partition_that_never_delivered_holds_the_sweep_back(
    database_factory: DatabaseFactory,
    migrated_template: str,
    kafka_bootstrap: str,
    ask_the_log: bool,
) -> None:
    """A support partition that is behind holds the watermark back whether or not it
    delivered a record before: the sweep must not rescore an organization through a
    silence its late complaint lies in (the replay would apply the complaint first).
    Without asking the log (`ask_the_log=False`, the sweep before) it did."""
    held_back = await _live_then_late(
        await database_factory(template=migrated_template), kafka_bootstrap, True, ask_the_log=True
    )
    never_delivered = await _live_then_late(
        await database_factory(template=migrated_template),
        kafka_bootstrap,
        False,
        ask_the_log=ask_the_log,
    )
    assert (never_delivered == held_back) is ask_the_log


async def test_unread_partitions_are_those_whose_log_holds_records(kafka_bootstrap: str) -> None:
    """An empty partition never holds the sweep back, whether or not the process knows
    the topics' partitions; one holding a record does until it has stored progress."""
    topics = await make_topics(kafka_bootstrap, partitions=2)
    inputs = [topics.usage, topics.support]
    every = [(topic, p) for topic in inputs for p in (0, 1)]
    kafka = KafkaConnection(kafka_bootstrap)
    asking, knowing = (
        UnreadPartitions(kafka, inputs),
        UnreadPartitions(kafka, inputs, lambda _: every),
    )
    for unread in (asking, knowing):
        assert await unread(frozenset()) == []
    complaint = _support_record(_org("unread"), "opened", LAST, 1, 0, topics.support)
    await _in_the_log(kafka_bootstrap, [complaint])
    for unread in (asking, knowing):
        assert await unread(frozenset()) == [(topics.support, 1)]
        assert await unread(frozenset({(topics.support, 1)})) == []


async def test_the_event_ids_purge_is_logged_counted_and_not_held_by_full_pages(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    """Event ids past the dedupe window are forgotten after a page that was not full,
    and at least once a minute while full pages follow each other (a long backlog of
    silent organizations held the purge off for as long as it lasted, review 35a M4);
    each purge that forgot ids logs `event_ids_purged` and counts them."""
    orgs = [_any_org(f"purge-{i}") for i in range(12)]
    purged: list[int] = []
    async with _pipeline(migrated_database, kafka_bootstrap) as feed:
        await feed.send([(org, "login", LAST, {}) for org in orgs])
        await feed.send([(_any_org("purge-clock"), "login", LAST + timedelta(days=30), {})])
        sweep = _sweep(feed, page_size=2, dedupe_retention_days=14, on_purge=purged.append)
        conn = await asyncpg.connect(migrated_database)
        try:

            async def age(n: int) -> None:
                await conn.execute(
                    "UPDATE processed_events SET processed_at = now() - interval '20 days'"
                    " WHERE event_id IN (SELECT event_id FROM processed_events"
                    " WHERE processed_at > now() - interval '1 day' LIMIT $1)",
                    n,
                )

            async def kept() -> int:
                return int(await conn.fetchval("SELECT count(*) FROM processed_events"))

            total = await kept()
            assert sweep.oldest_event_id_age() == 0.0  # no purge in this process yet
            await age(3)
            with capture_logs() as logs:
                assert await sweep.step() == AT_ONCE  # a full page
            assert sum(purged) == 3 and await kept() == total - 3
            (line,) = [entry for entry in logs if entry["event"] == "event_ids_purged"]
            assert line["rows"] == 3
            # the oldest kept is one applied by this test, not one of the aged ones
            assert 0.0 < sweep.oldest_event_id_age() < 3600.0
            await age(2)
            assert await sweep.step() == AT_ONCE  # full again, a minute not up
            assert sum(purged) == 3 and await kept() == total - 3
            # a purge that fails (here the writer may not delete) is logged and does not
            # hold the backlog back: the step still asks for the next page at once
            oldest = sweep.oldest_event_id_at
            await conn.execute("REVOKE DELETE ON processed_events FROM healthscore_writer")
            try:
                sweep._purged_at = time.monotonic() - sweep_module.PURGE_INTERVAL_SECONDS
                with capture_logs() as logs:
                    assert await sweep.step() == AT_ONCE
            finally:
                await conn.execute("GRANT DELETE ON processed_events TO healthscore_writer")
            (failed,) = [entry for entry in logs if entry["event"] == "event_ids_purge_failed"]
            assert failed["error"] == "InsufficientPrivilegeError"
            assert sum(purged) == 3 and sweep.oldest_event_id_at == oldest
            sweep._purged_at = time.monotonic() - sweep_module.PURGE_INTERVAL_SECONDS
            assert await sweep.step() == AT_ONCE
            assert sum(purged) == 5 and await kept() == total - 5
            await age(1)
            while await sweep.step() is not None:  # to the backlog's end, then a purge
                pass
            assert sum(purged) == 6 and await kept() == total - 6
        finally:
            await conn.close()


async def test_the_score_history_is_purged_past_its_retention_and_never_its_last_month(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    """HISTORY_RETENTION_DAYS: the sweep's replicas delete the days before the cutoff
    (once a UTC day, organization by organization, logged and counted); the writer's
    function cannot delete the last 31 days whatever cutoff it is given (the owner's
    policies, migration 0118). The history was kept until the organization was erased
    (review 35a M1)."""
    org = _any_org("history-retention")
    today = datetime.now(UTC).date()
    purged: list[int] = []
    async with _pipeline(migrated_database, kafka_bootstrap) as feed:
        await feed.send([(org, "login", LAST, {})])
        sweep = _sweep(feed, history_retention_days=60, on_history_purge=purged.append)
        conn = await asyncpg.connect(migrated_database)
        try:
            columns = [
                row[0]
                for row in await conn.fetch(
                    "SELECT column_name FROM information_schema.columns"
                    " WHERE table_name = 'health_score_history' AND is_generated = 'NEVER'"
                    " AND column_name <> 'scored_at' ORDER BY ordinal_position"
                )
            ]
            listed = ", ".join(columns)  # the catalog's names, no input

            async def a_day(ago: int) -> None:
                # `day` is generated from `scored_at`: noon UTC of that day
                noon = datetime.combine(today - timedelta(days=ago), datetime.min.time(), UTC)
                await conn.execute(
                    f"INSERT INTO health_score_history ({listed}, scored_at)"
                    f" SELECT {listed}, $2 FROM health_score_history"
                    " WHERE organization_id = $1 LIMIT 1",
                    uuid.UUID(org),
                    noon + timedelta(hours=12),
                )

            async def days() -> list[int]:
                rows = await conn.fetch(
                    "SELECT day FROM health_score_history WHERE organization_id = $1",
                    uuid.UUID(org),
                )
                return sorted((today - row["day"]).days for row in rows)

            for ago in (75, 61, 59, 33, 32, 31, 20, 0):
                await a_day(ago)
            before = await days()
            assert max(before) > 80  # the login's own day, about 90 days ago
            with capture_logs() as logs:
                await sweep.step()
            assert await days() == [0, 20, 31, 32, 33, 59]
            assert sum(purged) == len(before) - 6
            (line,) = [entry for entry in logs if entry["event"] == "score_history_purged"]
            assert line["rows"] == sum(purged)
            # once a day: a day past the cutoff written now waits for the next UTC day
            await a_day(70)
            await sweep.step()
            assert await days() == [0, 20, 31, 32, 33, 59, 70]
            sweep._history_purged_before = None  # as when the day turns
            await sweep.step()
            assert await days() == [0, 20, 31, 32, 33, 59]
            # the writer's function and a cutoff of tomorrow: the last 31 days stay (its
            # session's own time zone does not move them)
            async with feed.pipeline._pool.acquire() as writer, writer.transaction():
                await writer.execute("SET LOCAL TimeZone = 'Pacific/Kiritimati'")
                gone = await writer.fetchval(
                    "SELECT purge_score_history($1, $2)",
                    today + timedelta(days=1),
                    [uuid.UUID(org)],
                )
            assert gone == 3 and await days() == [0, 20, 31]
        finally:
            await conn.close()
